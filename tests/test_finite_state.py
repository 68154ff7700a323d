"""No non-finite state, ever (issue 18): a recorded input that would overflow the
micro-LoRA is refused as bad input, and no learning class builds a NaN/inf version."""

from __future__ import annotations

import numpy as np
import pytest

from sona_store import SonaConfig, SonaStore
from sona_store.errors import ValidationError
from sona_store.learning.ewc import EwcConfig, EwcState, check_finite
from sona_store.learning.micro_lora import (
    MicroAccumulator,
    MicroLoraWeights,
    accumulate,
    accumulate_groups,
    initial_micro_lora,
)
from sona_store.services.validation import MICRO_SIGNAL_MAX_NORM

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
