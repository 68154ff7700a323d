"""Regression tests for defects a review of the faster ingest path found:
values the bulk and item-by-item validation paths treated differently, and
the WAL checkpoint thread outliving its store."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from typing import Any

import numpy as np
import pytest

from sona_store import SonaConfig, SonaStore
from sona_store.errors import ValidationError
from sona_store.services.validation import validate_batch

CONFIG = SonaConfig(hidden_dim=4, embedding_dim=4)
ACTS = [0.5, 0.25, 0.125, 0.75]


def _both_paths(query: Any = None, attention: Any = None, *, ignore: bool = True) -> list[Any]:
    """What each path makes of one trajectory: (query, attention bytes) or
    "rejected". A `step_idx` sends it through the item-by-item path."""
    out: list[Any] = []
    for item_path in (False, True):
        step: dict[str, Any] = {"activations": ACTS, "reward": 0.5}
        if attention is not None:
            step["attention_weights"] = attention
        if item_path:
            step["step_idx"] = 0
        item = {"query_embedding": ACTS if query is None else query, "steps": [step]}
        item["quality"] = 0.5
        try:
            with warnings.catch_warnings():
                if ignore:  # as an application silencing warnings would
                    warnings.simplefilter("ignore")
                batch = validate_batch([item], CONFIG)
            out.append((batch.queries[0].tolist(), bytes(batch.attention[0])))
        except ValidationError:
            out.append("rejected")
    return out


@pytest.mark.parametrize(
    "query",
    [
        [np.complex128(0.5 + 2j), 0.25, 0.125, 0.75],  # struct took the real part
        np.array([np.complex128(0.5 + 9j), 0.25, 0.125, 0.75], dtype=object),
        np.array([True, 0.25, 0.125, 0.75], dtype=object),  # bools inside objects
    ],
    ids=["complex-in-list", "complex-in-object-array", "bool-in-object-array"],
)
@pytest.mark.parametrize("ignore", [False, True], ids=["warnings-as-set", "warnings-ignored"])
def test_refused_on_both_paths(query, ignore):
    assert _both_paths(query=query, ignore=ignore) == ["rejected", "rejected"]


def test_large_integers_store_the_same_float32_on_both_paths():
    bulk, item = _both_paths(query=[2**60 + 2**36 + 1, 1, 2, 3])
    assert bulk != "rejected" and bulk == item


def test_an_empty_attention_array_is_no_attention_on_both_paths():
    bulk, item = _both_paths(attention=np.zeros(0, np.float32))
    assert bulk == item and bulk[1] == b""


def test_closing_a_store_twice_is_harmless(tmp_path):
    store = SonaStore(f"sqlite:///{tmp_path / 'twice.db'}", CONFIG)
    store.close()
    store.close()


def test_a_store_dropped_unclosed_takes_its_checkpoint_thread_along(tmp_path):
    def count() -> int:
        return sum(t.name == "sona-wal-checkpoint" for t in threading.enumerate())

    before = count()
    item = {"query_embedding": ACTS, "steps": [{"activations": ACTS, "reward": 0.5}]}
    item["quality"] = 0.5
    for i in range(5):
        store = SonaStore(f"sqlite:///{tmp_path / f's{i}.db'}", CONFIG)
        store.record_trajectories([item])
        del store
    gc.collect()
    deadline = time.monotonic() + 5
    while count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count() == before


def test_signals_of_a_batch_whose_commit_was_not_reported_are_adopted(db_url, monkeypatch):
    """The commit took effect but the call failed after it (say, the
    connection dropped): the batch's signals, dropped from memory, must be
    found in the database by the next flush."""
    import contextlib

    import sqlalchemy as sa

    import sona_store.store as store_module

    from .helpers import make_trajectories

    store = SonaStore(db_url, SonaConfig(hidden_dim=8, micro_flush_threshold=10))
    try:
        store.record_trajectories(make_trajectories(1, 8, seed=1))  # adopted once
        real = store_module.connection_transaction

        @contextlib.contextmanager
        def commit_then_fail(engine, **kwargs):
            with real(engine, **kwargs) as connection:
                yield connection
            raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))

        monkeypatch.setattr(store_module, "connection_transaction", commit_then_fail)
        with pytest.raises(sa.exc.OperationalError):
            store.record_trajectories(make_trajectories(4, 8, seed=2))
        monkeypatch.undo()
        store.record_trajectories(make_trajectories(5, 8, seed=3))
        with store.engine.connect() as conn:
            applied = conn.execute(sa.text("SELECT count(*) FROM micro_lora_signals")).scalar()
        assert applied == 10  # 1 + 4 (committed, unreported) + 5
        assert store.pending_signals == 0
    finally:
        store.close()
