"""The background learning step (pattern gradient -> EWC++ -> base LoRA): the
fixes of the reference's defects 2 and 3, end to end in numpy."""

from __future__ import annotations

import numpy as np

from sona_store.learning import base_lora
from sona_store.learning.background import ewc_config_for, learn
from sona_store.learning.ewc import EwcState

DIM, RANK, LAYERS = 16, 2, 3


def _start():
    lora = base_lora.initial_base_lora(LAYERS, RANK, DIM)
    return lora, EwcState.initial(ewc_config_for(lora.param_count, 2000.0))


def _direction(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_first_step_changes_fisher_and_output():
    lora, state = _start()
    g = _direction(1)
    step = learn(lora, state, g, lr=0.1, ewc_lambda=2000.0)
    assert step is not None and not step.task_boundary
    assert np.abs(step.ewc_state.fisher).max() > 0  # defect 2: it stayed zero
    assert np.array_equal(step.ewc_state.weights, base_lora.flat_params(step.lora))
    x = g
    assert not np.allclose(base_lora.forward(step.lora, 0, x), x)  # defect 3: inert
    assert float((base_lora.forward(step.lora, 0, x) - x) @ g) > 0


def test_zero_gradient_learns_nothing():
    lora, state = _start()
    assert learn(lora, state, np.zeros(DIM, np.float32), lr=0.1, ewc_lambda=2000.0) is None


def _train(lora, state, g, cycles, ewc_lambda):
    boundaries = 0
    for _ in range(cycles):
        step = learn(lora, state, g, lr=0.05, ewc_lambda=ewc_lambda)
        lora, state = step.lora, step.ewc_state
        boundaries += step.task_boundary
    return lora, state, boundaries


def test_task_boundary_protects_what_task_a_used():
    lora, state = _start()
    a, b = _direction(1), _direction(2)
    lora, state, boundaries = _train(lora, state, a, 60, 2000.0)
    assert boundaries == 0 and not state.tasks
    fisher_a = state.fisher.copy()
    before = base_lora.flat_params(lora)
    lora, state, boundaries = _train(lora, state, b, 5, 2000.0)
    assert boundaries == 1 and len(state.tasks) == 1
    moved = np.abs(base_lora.flat_params(lora) - before)
    raw_b = np.abs(base_lora.hebbian_gradient(lora, b))
    important = fisher_a > np.quantile(fisher_a, 0.75)
    unimportant = fisher_a < np.quantile(fisher_a, 0.25)
    # Movement per unit of raw gradient: parameters task A relied on move less.
    ratio = moved / np.maximum(raw_b, 1e-12)
    assert np.median(ratio[important]) < 0.5 * np.median(ratio[unimportant])


def test_ewc_off_does_not_constrain():
    lora, state = _start()
    a = _direction(1)
    on, _, _ = _train(lora, state, a, 20, 2000.0)
    off, _, _ = _train(lora, state, a, 20, 0.0)
    # Without EWC++ the same gradients move the adapter further.
    assert np.linalg.norm(base_lora.flat_params(off)) > np.linalg.norm(base_lora.flat_params(on))
