"""EWC++ operations on 2-4 parameter vectors, each expectation worked out by hand."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sona_store.learning.base_lora import proximal_step
from sona_store.learning.ewc import (
    EwcConfig,
    EwcState,
    TaskMemory,
    anchor_terms,
    detect_task_boundary,
    ewc_step,
    start_new_task,
    update_fisher,
    validate_state,
    with_weights,
)

from .oracles.ewc import consolidate_all_tasks, regularization_loss


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def task(task_id: int, fisher: list[float], weights: list[float], importance: float = 1.0):
    return TaskMemory(task_id, f32(*fisher), f32(*weights), importance)


def state_with(config: EwcConfig, **changes) -> EwcState:
    return dataclasses.replace(EwcState.initial(config), **changes)


def snapshot(state: EwcState) -> list[np.ndarray]:
    arrays = [state.fisher, state.weights, state.grad_mean, state.grad_var]
    for t in state.tasks:
        arrays += [t.fisher, t.optimal_weights]
    return [a.copy() for a in arrays]


def assert_unchanged(state: EwcState, before: list[np.ndarray]) -> None:
    for a, b in zip(snapshot(state), before, strict=True):
        np.testing.assert_array_equal(a, b)


CFG3 = EwcConfig(param_count=3, fisher_ema_decay=0.5)


def test_initial_state():
    s = EwcState.initial(CFG3)
    np.testing.assert_array_equal(s.fisher, [0, 0, 0])
    np.testing.assert_array_equal(s.weights, [0, 0, 0])
    np.testing.assert_array_equal(s.grad_mean, [0, 0, 0])
    np.testing.assert_array_equal(s.grad_var, [1, 1, 1])
    assert (s.samples_seen, s.task_id, s.lambda_, s.tasks) == (0, 0, 2000.0, ())
    assert s.fisher.dtype == np.float32


def test_update_fisher_ema():
    # decay 0.5: F1 = 0.5*0 + 0.5*g1^2 = [0.5, 2, 4.5]; F2 = 0.5*F1 + 0.5*g2^2 = [0.75, 1, 2.75]
    s = update_fisher(EwcState.initial(CFG3), f32(1, 2, -3), CFG3)
    np.testing.assert_allclose(s.fisher, [0.5, 2.0, 4.5])
    s = update_fisher(s, f32(1, 0, 1), CFG3)
    np.testing.assert_allclose(s.fisher, [0.75, 1.0, 2.75])
    assert s.samples_seen == 2
    assert s.fisher.dtype == np.float32


def test_update_fisher_welford_mean_and_m2():
    # n=1: delta = g1, mean = [1, 2, -3], var += g1 * (g1 - mean) = 0 -> stays 1.
    # n=2: delta = [2, -2, 2], mean = [2, 1, -2], g2 - mean = [1, -1, 1], var += [2, 2, 2] = 3.
    # (M2 of {1, 3} is (1-2)^2 + (3-2)^2 = 2, on top of the initial 1.)
    s = update_fisher(EwcState.initial(CFG3), f32(1, 2, -3), CFG3)
    np.testing.assert_allclose(s.grad_mean, [1, 2, -3])
    np.testing.assert_allclose(s.grad_var, [1, 1, 1])
    s = update_fisher(s, f32(3, 0, -1), CFG3)
    np.testing.assert_allclose(s.grad_mean, [2, 1, -2])
    np.testing.assert_allclose(s.grad_var, [3, 3, 3])


def feed(state: EwcState, g: np.ndarray, times: int, config: EwcConfig) -> EwcState:
    for _ in range(times):
        state = update_fisher(state, g, config)
    return state


def test_boundary_false_under_50_samples():
    s = feed(EwcState.initial(CFG3), f32(0.1, 0.1, 0.1), 49, CFG3)
    assert not detect_task_boundary(s, f32(100, 100, 100), CFG3)


def test_boundary_on_clear_jump_after_similar_samples():
    # 60 samples of 0.1: mean = 0.1, M2 stays 1 (each delta*(g - mean) is 0), so
    # var/samples = 1/60 and the z-score of a value v is |v - 0.1| * sqrt(60).
    s = feed(EwcState.initial(CFG3), f32(0.1, 0.1, 0.1), 60, CFG3)
    assert s.samples_seen == 60
    assert not detect_task_boundary(s, f32(0.1, 0.1, 0.1), CFG3)  # z = 0
    assert detect_task_boundary(s, f32(10, 10, 10), CFG3)  # z = 9.9 * sqrt(60) ~ 76.7
    r = math.sqrt(60)
    assert detect_task_boundary(s, f32(0.1 + 2.5 / r, 0.1 + 2.5 / r, 0.1 + 2.5 / r), CFG3)
    # mean z = (1.5 + 1.5 + 1.5) / 3 = 1.5 <= 2
    assert not detect_task_boundary(s, f32(0.1 + 1.5 / r, 0.1 - 1.5 / r, 0.1 + 1.5 / r), CFG3)
    # z = [3.5, 1, 1], mean 1.83 -> below; [4.5, 1, 1], mean 2.17 -> above
    assert not detect_task_boundary(s, f32(0.1 + 3.5 / r, 0.1 + 1 / r, 0.1 - 1 / r), CFG3)
    assert detect_task_boundary(s, f32(0.1 + 4.5 / r, 0.1 + 1 / r, 0.1 - 1 / r), CFG3)


def test_boundary_only_counts_parameters_with_variance():
    # var/samples = [0, 0, 1/50]: only parameter 2 counts, z = |2 - 0| / sqrt(1/50) > 2.
    s = state_with(CFG3, grad_var=f32(0, 0, 1), samples_seen=50)
    assert detect_task_boundary(s, f32(0, 0, 2), CFG3)
    assert not detect_task_boundary(s, f32(100, 100, 0.1), CFG3)  # z = 0.1*sqrt(50) ~ 0.71
    no_variance = state_with(CFG3, grad_var=f32(0, 0, 0), samples_seen=50)
    assert not detect_task_boundary(no_variance, f32(100, 100, 100), CFG3)


def test_start_new_task_snapshots_and_resets():
    s = state_with(
        CFG3,
        fisher=f32(1, 2, 3),
        weights=f32(4, 5, 6),
        grad_mean=f32(7, 7, 7),
        grad_var=f32(9, 9, 9),
        samples_seen=70,
        task_id=3,
    )
    before = snapshot(s)
    n = start_new_task(s, CFG3)
    assert_unchanged(s, before)
    assert len(n.tasks) == 1
    assert (n.tasks[0].task_id, n.tasks[0].importance) == (3, 1.0)
    np.testing.assert_array_equal(n.tasks[0].fisher, [1, 2, 3])
    np.testing.assert_array_equal(n.tasks[0].optimal_weights, [4, 5, 6])
    np.testing.assert_array_equal(n.fisher, [0, 0, 0])
    np.testing.assert_array_equal(n.grad_mean, [0, 0, 0])
    np.testing.assert_array_equal(n.grad_var, [1, 1, 1])
    np.testing.assert_array_equal(n.weights, [4, 5, 6])
    assert (n.samples_seen, n.task_id) == (0, 4)
    assert n.lambda_ == pytest.approx(2000 * 1.1)


def test_task_ring_drops_oldest_past_max_tasks():
    cfg = EwcConfig(param_count=3, max_tasks=2)
    s = EwcState.initial(cfg)
    for _ in range(3):
        s = start_new_task(s, cfg)
    assert [t.task_id for t in s.tasks] == [1, 2]
    assert s.task_id == 3


def test_lambda_formula_and_clamping():
    cfg = EwcConfig(param_count=3, max_tasks=10, initial_lambda=1000.0, max_lambda=1250.0)
    s = EwcState.initial(cfg)
    expected = [1100.0, 1200.0, 1250.0, 1250.0]  # 1000 * (1 + 0.1 n), capped at 1250
    for want in expected:
        s = start_new_task(s, cfg)
        assert s.lambda_ == pytest.approx(want)
    low = EwcConfig(param_count=3, initial_lambda=50.0, min_lambda=100.0)
    assert start_new_task(EwcState.initial(low), low).lambda_ == 100.0  # 55 raised to 100
    # With max_tasks 2 the ring stays at 2 tasks: lambda stops at 1000 * 1.2.
    ring = EwcConfig(param_count=3, max_tasks=2, initial_lambda=1000.0)
    s = EwcState.initial(ring)
    for _ in range(4):
        s = start_new_task(s, ring)
    assert s.lambda_ == pytest.approx(1200.0)


def test_anchor_terms():
    cfg = EwcConfig(param_count=4)
    s = state_with(
        cfg,
        lambda_=100.0,
        fisher=f32(0, 0, 0.05, 0),  # the running task's Fisher: not in the penalty
        tasks=(
            task(0, [0, 0.01, 0.02, 0], [0, 1, 2, 3]),
            task(1, [0.01, 0, 0.02, 0], [4, 5, 6, 7], importance=2.0),
        ),
    )
    before = snapshot(s)
    pull, weight = anchor_terms(s, cfg)
    # weight = 100 * sum_t importance_t F_t; pull = 100 * sum_t importance_t F_t w*_t.
    np.testing.assert_allclose(weight, [2, 1, 2 + 4, 0], rtol=1e-6)
    np.testing.assert_allclose(pull, [2 * 4, 1 * 1, 2 * 2 + 4 * 6, 0], rtol=1e-6)
    assert_unchanged(s, before)
    zero_pull, zero_weight = anchor_terms(EwcState.initial(CFG3), CFG3)
    assert not zero_pull.any() and not zero_weight.any()


def test_penalty_pulls_a_two_parameter_toy_back_to_its_anchor():
    # Two parameters, one remembered task whose optimum is (0, 0) and whose Fisher is
    # (1, 0): only parameter 0 mattered to it. lambda = 1. With no task drive, each
    # proximal step of rate lr solves w' = argmin |w' - w|^2 / (2 lr) + F (w' - 0)^2 / 2:
    # w0' = w0 / (1 + lr), w1' = w1. After n steps w0 = (1 + lr)^-n exactly, w1 = 1.
    cfg = EwcConfig(param_count=2, initial_lambda=1.0, min_lambda=0.5)
    s = state_with(cfg, lambda_=1.0, tasks=(task(0, [1, 0], [0, 0]),))
    pull, weight = anchor_terms(s, cfg)
    w = f32(1, 1)
    zero = np.zeros(2, np.float32)
    for _ in range(10):
        w = proximal_step(w, zero, zero, 0.5, anchor_pull=pull, anchor_weight=weight)
    np.testing.assert_allclose(w, [1.5**-10, 1.0], rtol=1e-5)
    # With a drive toward (2, 2) at curvature 1, the fixed point minimises
    # (w - 2)^2 / 2 + F (w - 0)^2 / 2: (2 / (1 + 1), 2) = (1, 2).
    drive, curvature = f32(2, 2), f32(1, 1)
    for _ in range(200):
        w = proximal_step(w, drive, curvature, 0.5, anchor_pull=pull, anchor_weight=weight)
    np.testing.assert_allclose(w, [1.0, 2.0], rtol=1e-5)


def test_boundary_then_anchor_pulls_back():
    # A toy run through ewc_step: task A holds w at (1, 1) with Fisher samples (1, 0);
    # the boundary remembers that anchor; a step that drives both toward (-1, -1) moves
    # parameter 0 (A relied on it) less than parameter 1 (it did not).
    cfg = EwcConfig(param_count=2, fisher_ema_decay=0.5, initial_lambda=10.0)
    s = EwcState.initial(cfg)
    for i in range(60):
        s, boundary = ewc_step(s, f32(1 + 0.01 * (i % 2), 1), f32(1, 0), cfg)
        assert not boundary
    s = with_weights(s, f32(1, 1))
    s, boundary = ewc_step(s, f32(-5, -5), f32(0, 0), cfg)
    assert boundary and len(s.tasks) == 1
    np.testing.assert_array_equal(s.tasks[0].optimal_weights, [1, 1])
    pull, weight = anchor_terms(s, cfg)
    w = proximal_step(
        f32(1, 1), f32(-1, -1), f32(1, 1), 0.5, anchor_pull=pull, anchor_weight=weight
    )
    lam_f = s.lambda_ * s.tasks[0].fisher[0]  # 11 * (1 - 0.5^60)
    np.testing.assert_allclose(w, [(1 - 0.5 + 0.5 * lam_f) / (1.5 + 0.5 * lam_f), 1 / 3], atol=1e-6)
    assert abs(w[0] - 1) < abs(w[1] - 1) / 10


def test_regularization_loss():
    s = state_with(
        CFG3,
        lambda_=100.0,
        tasks=(task(0, [1, 2, 0], [0, 1, 2]), task(1, [0.5, 0, 0], [1, 1, 1], importance=2.0)),
    )
    w = f32(2, 1, 1)
    # task 0: 1*(2-0)^2 + 2*(1-1)^2 + 0*(1-2)^2 = 4; task 1: 2 * 0.5*(2-1)^2 = 1.
    # 100 / 2 * (4 + 1) = 250
    assert regularization_loss(s, w, CFG3) == pytest.approx(250.0)
    assert regularization_loss(EwcState.initial(CFG3), w, CFG3) == 0.0


def test_consolidate_all_tasks():
    s = state_with(
        CFG3,
        weights=f32(7, 8, 9),
        tasks=(task(4, [1, 0, 2], [0, 0, 0]), task(5, [0, 3, 1], [1, 1, 1], importance=2.0)),
    )
    before = snapshot(s)
    c = consolidate_all_tasks(s, CFG3)
    assert_unchanged(s, before)
    assert len(c.tasks) == 1
    merged = c.tasks[0]
    # (1*[1, 0, 2] + 2*[0, 3, 1]) / 3 = [1/3, 2, 4/3]; importance 1 + 2 = 3
    np.testing.assert_allclose(merged.fisher, [1 / 3, 2, 4 / 3], rtol=1e-6)
    assert merged.importance == 3.0
    assert merged.task_id == 0
    np.testing.assert_array_equal(merged.optimal_weights, [7, 8, 9])
    empty = EwcState.initial(CFG3)
    assert consolidate_all_tasks(empty, CFG3).tasks == ()


def test_with_weights_copies():
    w = f32(1, 2, 3)
    s0 = EwcState.initial(CFG3)
    s = with_weights(s0, w)
    w[0] = 99
    np.testing.assert_array_equal(s.weights, [1, 2, 3])
    np.testing.assert_array_equal(s0.weights, [0, 0, 0])


@pytest.mark.parametrize(
    "call",
    [
        lambda s, v: update_fisher(s, v, CFG3),
        lambda s, v: detect_task_boundary(s, v, CFG3),
        lambda s, v: regularization_loss(s, v, CFG3),
        lambda s, v: with_weights(s, v),
        lambda s, v: ewc_step(s, v, np.ones(3, np.float32), CFG3),
        lambda s, v: ewc_step(s, np.ones(3, np.float32), v, CFG3),
    ],
)
def test_wrong_length_and_non_finite_raise(call):
    s = EwcState.initial(CFG3)
    with pytest.raises(ValueError, match="expected length 3.*got 4"):
        call(s, f32(1, 2, 3, 4))
    with pytest.raises(ValueError, match="expected length 3.*got 2"):
        call(s, f32(1, 2))
    with pytest.raises(ValueError, match="NaN or infinite"):
        call(s, f32(1, np.nan, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        call(s, f32(1, np.inf, 3))


def test_state_of_another_size_is_rejected():
    big = EwcState.initial(EwcConfig(param_count=4))
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        validate_state(big, CFG3)
    with pytest.raises(ValueError):
        update_fisher(big, f32(1, 2, 3), CFG3)


def test_update_fisher_does_not_mutate():
    s = state_with(CFG3, fisher=f32(1, 1, 1), grad_mean=f32(2, 2, 2), samples_seen=5)
    before = snapshot(s)
    g = f32(3, 4, 5)
    update_fisher(s, g, CFG3)
    assert_unchanged(s, before)
    assert s.samples_seen == 5
    np.testing.assert_array_equal(g, [3, 4, 5])


def test_ewc_step_order():
    # 60 samples of 0.1 (mean 0.1, M2 1): the signal [10, 10, 10] is a boundary
    # (z ~ 76.7) tested against the old task's statistics; the new task starts from it:
    # Fisher 0.5 * the given sample, Welford mean the signal.
    s = feed(EwcState.initial(CFG3), f32(0.1, 0.1, 0.1), 60, CFG3)
    s = dataclasses.replace(s, lambda_=100.0, tasks=(task(0, [0, 0.01, 0], [0, 0, 0]),))
    before = snapshot(s)
    new, boundary = ewc_step(s, f32(10, 10, 10), f32(2, 4, 6), CFG3)
    assert_unchanged(s, before)
    assert boundary
    assert len(new.tasks) == 2 and new.task_id == s.task_id + 1
    np.testing.assert_array_equal(new.tasks[-1].fisher, s.fisher)
    assert new.samples_seen == 1
    np.testing.assert_allclose(new.fisher, [1, 2, 3], rtol=1e-6)
    np.testing.assert_allclose(new.grad_mean, [10, 10, 10], rtol=1e-6)
    # No boundary: same task, the Fisher folds in the sample.
    same, boundary = ewc_step(s, f32(0.1, 0.1, 0.1), f32(2, 2, 2), CFG3)
    assert not boundary and same.samples_seen == 61 and len(same.tasks) == 1
    with pytest.raises(ValueError, match=">= 0"):
        ewc_step(s, f32(0.1, 0.1, 0.1), f32(-1, 0, 0), CFG3)
