"""Regression tests for defects a code review found: overflowing values,
duplicate queued signals, restore after a requeue, a flush failing after the
commit, a stale head cache, and passwords in URL queries."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import RollbackError, SonaConfig, SonaStore
from sona_store.db.engine import mask_url
from sona_store.db.head_cache import HeadCache
from sona_store.services.instant import Signal

from .helpers import make_trajectories


def _count(store: SonaStore, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"activations": [0.5] * 8, "reward": 1e39}, "steps.reward"),
        ({"activations": [3e38] * 8, "reward": 0.9}, "steps.activations"),
    ],
)
def test_values_that_overflow_float32_are_rejected(store, step, field):
    """Finite in float64, infinite once in float32: the store used to accept
    them, store a NaN embedding, and fail every later cycle and flush."""
    good = make_trajectories(3, 8)
    bad = {"query_embedding": [0.1] * 8, "quality": 0.5, "steps": [step, step]}
    with pytest.raises(ValueError, match=field) as info:
        store.record_trajectories([*good, bad])
    assert "trajectory 3" in str(info.value)
    assert _count(store, "trajectories") == 0


def test_a_pattern_embedding_that_would_overflow_is_rejected(store):
    """Query plus reward-weighted activations beyond float32, while the
    learning signal (activations alone, normalised) stays finite: only the
    embedding each cycle computes overflows, so validation must compute it."""
    good = make_trajectories(3, 8)
    step = {"activations": [1e38] * 8, "reward": 1.0}
    bad = {"query_embedding": [3e38] * 8, "quality": 0.5, "steps": [step]}
    with pytest.raises(ValueError, match="steps.activations") as info:
        store.record_trajectories([*good, bad])
    assert "trajectory 3" in str(info.value)
    assert _count(store, "trajectories") == 0


def test_large_values_whose_embedding_stays_finite_are_kept(store):
    """Near float32's limit (past the cheap bound) but finite throughout: the
    embeddings are computed exactly, found finite, and the batch is kept."""
    step = {"activations": [1e38] * 8, "reward": 0.5}
    big = {"query_embedding": [1e38] * 8, "quality": 0.5, "steps": [step]}
    ids = store.record_trajectories([*make_trajectories(3, 8), big])
    assert len(ids) == 4
    assert store.run_cycle(force=True).status == "completed"


def test_a_signal_queued_twice_is_applied_once(db_url):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, micro_flush_threshold=1000))
    try:
        ids = store.record_trajectories(make_trajectories(5, 8))
        duplicate = Signal(ids[0], np.ones(8, dtype=np.float32), 0.5)
        store._instant._pending.append(duplicate)  # as an adoption racing an observe would
        assert store.flush() == 5
        assert _count(store, "micro_lora_signals") == 5
        assert store.flush() == 0
    finally:
        store.close()


def test_restore_of_a_requeued_cycle_is_refused(store):
    store.record_trajectories(make_trajectories(12, 8, seed=1))
    store.run_cycle(force=True)
    store.record_trajectories(make_trajectories(12, 8, seed=2))
    second = store.run_cycle(force=True)
    store.rollback(second.cycle_id, requeue=True)
    head = store.head()
    with pytest.raises(RollbackError, match="requeued"):
        store.restore(second.cycle_id)
    assert store.head() == head
    # Its trajectories go to the next cycle, once.
    assert store.run_cycle(force=True).trajectories_processed == 12


def test_recording_succeeds_when_the_flush_after_it_fails(db_url, monkeypatch):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, micro_flush_threshold=10))
    try:

        def unavailable(*args, **kwargs):
            raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

        monkeypatch.setattr(store._instant, "_apply", unavailable)
        ids = store.record_trajectories(make_trajectories(12, 8))
        assert len(ids) == 12  # committed, and the caller is told so
        assert store.pending_signals == 12  # nothing dropped
        monkeypatch.undo()
        assert store.flush() == 12
    finally:
        store.close()


def test_head_cache_does_not_keep_a_read_that_raced_an_invalidation():
    heads = iter([(1,), (2,)])
    entered, release = threading.Event(), threading.Event()

    def slow_read() -> tuple:
        head = next(heads)
        if head == (1,):
            entered.set()
            release.wait(5)
        return head

    cache = HeadCache(slow_read, refresh_seconds=60)
    reader = threading.Thread(target=cache.head)
    reader.start()
    entered.wait(5)
    cache.invalidate()  # this process moved the head meanwhile
    release.set()
    reader.join(5)
    assert cache.head() == (2,)  # not the stale (1,) read


def test_password_in_the_url_query_is_masked():
    masked = mask_url("postgresql://u@127.0.0.1/db?password=s3cret&sslmode=disable")
    assert "s3cret" not in masked
    assert "sslmode=disable" in masked
