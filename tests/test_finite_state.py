"""No non-finite state, ever (issue 18): a recorded input that would overflow the
micro-LoRA is refused as bad input, and no learning class builds a NaN/inf version."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.errors import ValidationError
from sona_store.learning.ewc import EwcConfig, EwcState, check_finite
from sona_store.learning.micro_lora import (
    MicroLoraWeights,
    accumulate,
    accumulate_groups,
    initial_micro_lora,
)
from sona_store.services.validation import MICRO_SIGNAL_MAX_NORM

from .helpers import make_trajectories
from .oracles.micro_lora import MicroAccumulator

DIM = 8


def _no_step(value: float, quality: float = 0.9) -> dict:
    return {"query_embedding": [value] * DIM, "steps": [], "quality": quality}


def test_hundred_no_step_queries_at_1e37_are_refused_and_nothing_is_written(db_url):
    # Before: validation took entries up to float32-max / 4; 100 such queries
    # overflowed the micro-LoRA's group sum, an inf version was stored and
    # apply_micro_lora returned -inf.
    store = SonaStore(db_url, SonaConfig(hidden_dim=DIM, base_lora_rank=2))
    try:
        head = store.head()
        with pytest.raises(ValidationError, match="norm") as caught:
            store.record_trajectories([_no_step(1e37) for _ in range(100)])
        assert caught.value.field == "query_embedding" and caught.value.index == 0
        for _ in range(100):  # one at a time, as a live recorder would
            with pytest.raises(ValidationError):
                store.end_trajectory(store.begin_trajectory([1e37] * DIM), 0.9)
        store.flush()
        assert store.head() == head
        assert store.stats()["trajectories_recorded"] == 0
        out = store.apply_micro_lora(np.ones(DIM, np.float32))
        assert np.isfinite(out).all()
        # Just under the bound is accepted, learned from, and stays finite.
        big = MICRO_SIGNAL_MAX_NORM / np.sqrt(DIM) * 0.999
        store.record_trajectories([_no_step(big) for _ in range(100)])
        store.flush()
        assert store.head()["micro_lora_version_id"] != head["micro_lora_version_id"]
        assert np.isfinite(store.apply_micro_lora(np.ones(DIM, np.float32))).all()
    finally:
        store.close()


def test_micro_weights_refuse_non_finite_values():
    w = initial_micro_lora(2, DIM)
    for bad in (np.inf, -np.inf, np.nan):
        up = np.zeros((2, DIM), np.float32)
        up[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            MicroLoraWeights(down=w.down, up=up)


def test_micro_sums_that_overflow_raise():
    huge = np.full((100, DIM), 1e37, np.float32)
    q = np.ones(100, np.float32)
    with pytest.raises(ValueError, match="overflows"):
        accumulate(huge, q, 2)
    with pytest.raises(ValueError, match="overflows"):
        accumulate_groups(huge, q, 2, 100)
    acc = MicroAccumulator.empty(2, DIM)
    with pytest.raises(ValueError, match="overflows"):
        for row in huge:
            acc.add(row, 1.0)
    assert np.isfinite(acc.grad_up).all()  # the refused add left it as it was


def test_ewc_state_check_finite():
    state = EwcState.initial(EwcConfig(param_count=3))
    check_finite(state)
    state.fisher = np.array([0, np.inf, 0], np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_finite(state)


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
