"""Loop A core: learning signal and micro-LoRA, against the reference's golden
cases (npm @ruvector/sona 0.1.8) and against values worked out by hand."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sona_store.learning.micro_lora import (
    MicroLoraWeights,
    apply_update,
    initial_micro_lora,
    update_delta,
)
from sona_store.learning.signal import learning_signal

from .oracles.micro_lora import InstantLoop, MicroAccumulator, apply

GOLDEN_DIR = Path(__file__).parent / "data" / "golden" / "micro"
GOLDEN_CASES = sorted(GOLDEN_DIR.glob("*.json"))
TOLERANCE = 1e-6


def _steps(trajectory: dict, dim: int) -> tuple[np.ndarray, np.ndarray]:
    steps = trajectory["steps"]
    if not steps:
        return np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.float32)
    acts = np.array([s["activations"] for s in steps], dtype=np.float32)
    rewards = np.array([s["reward"] for s in steps], dtype=np.float32)
    return acts, rewards


def test_golden_cases_present() -> None:
    assert len(GOLDEN_CASES) >= 3


@pytest.mark.parametrize("path", GOLDEN_CASES, ids=lambda p: p.stem)
def test_golden_micro_case(path: Path) -> None:
    case = json.loads(path.read_text())
    cfg = case["config"]
    loop = InstantLoop(
        initial_micro_lora(cfg["micro_lora_rank"], cfg["hidden_dim"]),
        lr=cfg["micro_lora_lr"],
        flush_threshold=cfg["flush_threshold"],
    )
    for trajectory in case["trajectories"]:
        acts, rewards = _steps(trajectory, cfg["hidden_dim"])
        loop.observe(
            np.array(trajectory["query_embedding"], dtype=np.float32),
            acts,
            rewards,
            trajectory["quality"],
        )
    probe = np.array(case["probe"], dtype=np.float32)
    expected = case["expected"]

    before = apply(loop.weights, probe)
    np.testing.assert_allclose(before, expected["output_before_flush"], rtol=0, atol=TOLERANCE)
    assert loop.flush() is (len(case["trajectories"]) % cfg["flush_threshold"] != 0)
    after = apply(loop.weights, probe)
    np.testing.assert_allclose(after, expected["output_after_flush"], rtol=0, atol=TOLERANCE)


# --- initialisation -------------------------------------------------------------------------


def test_initial_weights_rank2_dim3() -> None:
    w = initial_micro_lora(2, 3)
    # flat i: (i * 0.618034) mod 1 = 0, .618034, .236068, .854102, .472136, .090170
    expected_down = [
        [-0.01, 0.00236068, -0.00527864],
        [0.00708204, -0.00055728, -0.0081966],
    ]
    assert w.down.dtype == np.float32 and w.up.dtype == np.float32
    assert w.down.shape == w.up.shape == (2, 3)
    np.testing.assert_allclose(w.down, expected_down, rtol=0, atol=1e-7)
    assert not w.up.any()
    assert w.rank == 2 and w.dim == 3
    assert w.scale == pytest.approx(1 / math.sqrt(2))
    assert initial_micro_lora(1, 3).scale == 1.0


def test_fresh_adapter_is_identity() -> None:
    x = np.array([0.3, -1.2, 5.0], dtype=np.float32)
    np.testing.assert_array_equal(apply(initial_micro_lora(2, 3), x), x)


@pytest.mark.parametrize(("rank", "dim"), [(0, 4), (3, 4), (1, 0)])
def test_initial_rejects_bad_shape(rank: int, dim: int) -> None:
    with pytest.raises(ValueError):
        initial_micro_lora(rank, dim)


# --- learning signal ------------------------------------------------------------------------


def test_signal_no_steps_is_query_unnormalised() -> None:
    # The npm build returns the query as is here (checked against its binary).
    g = learning_signal(np.array([3.0, 4.0]), np.zeros((0, 2)), np.zeros(0))
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, [3.0, 4.0])


def test_signal_one_step_has_no_baseline() -> None:
    # reward * activations, cut to len(query) = 2, then normalised: -2*[3, 4] / 10.
    g = learning_signal(np.zeros(2), np.array([[3.0, 4.0, 99.0]]), np.array([-2.0]))
    np.testing.assert_allclose(g, [-0.6, -0.8], atol=1e-7)


def test_signal_pads_short_activations() -> None:
    g = learning_signal(np.zeros(3), np.array([[3.0, 4.0]]), np.array([0.5]))
    assert g.shape == (3,)
    np.testing.assert_allclose(g, [0.6, 0.8, 0.0], atol=1e-7)


def test_signal_two_steps_subtract_mean_reward() -> None:
    # baseline (1 + 3) / 2 = 2; advantages -1, +1: -[1, 0] + [0, 2] = [-1, 2], norm sqrt(5).
    acts = np.array([[1.0, 0.0], [0.0, 2.0]])
    g = learning_signal(np.zeros(2), acts, np.array([1.0, 3.0]))
    np.testing.assert_allclose(g, np.array([-1.0, 2.0]) / math.sqrt(5), atol=1e-7)


def test_signal_equal_rewards_give_zero_without_dividing() -> None:
    acts = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = learning_signal(np.ones(2), acts, np.array([0.7, 0.7]))
    np.testing.assert_array_equal(g, [0.0, 0.0])


def test_signal_does_not_mutate_inputs() -> None:
    q = np.array([1.0, 2.0], dtype=np.float32)
    acts = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    rewards = np.array([1.0, 3.0], dtype=np.float32)
    copies = (q.copy(), acts.copy(), rewards.copy())
    learning_signal(q, acts, rewards)
    for original, kept in zip((q, acts, rewards), copies, strict=True):
        np.testing.assert_array_equal(original, kept)
    assert learning_signal(q, acts[:0], rewards[:0]) is not q


# --- forward --------------------------------------------------------------------------------


def test_apply_rank1_by_hand() -> None:
    w = MicroLoraWeights(down=np.array([[1.0, 2.0]]), up=np.array([[3.0, 4.0]]))
    # x . down = 3; out = x + 1 * 3 * [3, 4]
    np.testing.assert_allclose(apply(w, np.array([1.0, 1.0])), [10.0, 13.0])


def test_apply_rank2_by_hand_and_batch() -> None:
    w = MicroLoraWeights(
        down=np.array([[1.0, 0.0], [0.0, 1.0]]), up=np.array([[1.0, 1.0], [2.0, 2.0]])
    )
    # projections [1, 2]; 1 * [1, 1] + 2 * [2, 2] = [5, 5]; scale 1/sqrt(2)
    x = np.array([1.0, 2.0])
    expected = x + 5.0 / math.sqrt(2)
    out = apply(w, x)
    assert out.dtype == np.float32 and out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    batch = np.stack([x, np.zeros(2), -x])
    out_batch = apply(w, batch)
    assert out_batch.shape == (3, 2)
    np.testing.assert_allclose(out_batch, [expected, [0.0, 0.0], -expected], rtol=1e-6)


def test_apply_rejects_wrong_width_and_keeps_input() -> None:
    w = initial_micro_lora(1, 3)
    with pytest.raises(ValueError):
        apply(w, np.zeros(4))
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    apply(dataclasses.replace(w, up=np.ones((1, 3))), x)
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])


# --- weights are immutable values -----------------------------------------------------------


def test_weights_are_read_only_copies() -> None:
    up = np.zeros((1, 2), dtype=np.float32)
    w = MicroLoraWeights(down=np.ones((1, 2)), up=up)
    up[0, 0] = 9.0
    assert w.up[0, 0] == 0.0
    with pytest.raises(ValueError):
        w.up[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.up = up  # type: ignore[misc]


def test_weights_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        MicroLoraWeights(down=np.zeros((1, 2)), up=np.zeros((1, 3)))


# --- accumulate and apply -------------------------------------------------------------------


def test_accumulate_take_and_apply_by_hand() -> None:
    acc = MicroAccumulator.empty(2, 2)
    gradient = np.array([1.0, 2.0], dtype=np.float32)
    acc.add(gradient, 0.5)
    acc.add(np.array([3.0, 0.0]), 1.0)
    np.testing.assert_array_equal(gradient, [1.0, 2.0])
    # every rank row gets sum(g * q) = [0.5 + 3, 1 + 0]
    np.testing.assert_allclose(acc.grad_up, [[3.5, 1.0], [3.5, 1.0]])
    assert acc.count == 2

    grad_up, count = acc.take()
    assert count == 2 and acc.count == 0 and not acc.grad_up.any()
    np.testing.assert_allclose(grad_up, [[3.5, 1.0], [3.5, 1.0]])

    delta = update_delta(grad_up, count, 0.1)
    np.testing.assert_allclose(delta, [[0.175, 0.05], [0.175, 0.05]], rtol=1e-6)

    w0 = initial_micro_lora(2, 2)
    kept_grad = grad_up.copy()
    w1 = apply_update(w0, grad_up, count, 0.1)
    assert w1 is not w0
    np.testing.assert_array_equal(w1.down, w0.down)
    np.testing.assert_allclose(w1.up, delta)
    assert not w0.up.any()  # the old version is untouched
    np.testing.assert_array_equal(grad_up, kept_grad)


def test_count_zero_is_a_no_op() -> None:
    w = initial_micro_lora(1, 3)
    assert apply_update(w, np.zeros((1, 3)), 0, 0.5) is w
    assert not update_delta(np.ones((1, 3)), 0, 0.5).any()
    loop = InstantLoop(w, lr=0.5)
    assert loop.flush() is False
    assert loop.weights is w


def test_deltas_of_separate_accumulators_add() -> None:
    # Two processes, each with its own accumulator, apply their own delta to the stored up.
    w = initial_micro_lora(1, 2)
    a, b = MicroAccumulator.empty(1, 2), MicroAccumulator.empty(1, 2)
    a.add(np.array([1.0, 0.0]), 1.0)
    b.add(np.array([0.0, 1.0]), 0.5)
    b.add(np.array([0.0, 1.0]), 0.5)
    both = w.up + update_delta(*a.take(), 0.2) + update_delta(*b.take(), 0.2)
    np.testing.assert_allclose(both, [[0.2, 0.1]], rtol=1e-6)


def test_accumulator_rejects_bad_gradients() -> None:
    acc = MicroAccumulator.empty(1, 2)
    with pytest.raises(ValueError):
        acc.add(np.zeros(3), 1.0)
    with pytest.raises(ValueError):
        acc.add(np.array([np.nan, 0.0]), 1.0)
    with pytest.raises(ValueError):
        acc.add(np.zeros(2), float("inf"))
    assert acc.count == 0 and not acc.grad_up.any()


# --- instant loop ---------------------------------------------------------------------------


def test_instant_loop_flushes_at_threshold() -> None:
    loop = InstantLoop(initial_micro_lora(1, 2), lr=1.0, flush_threshold=3)
    w0 = loop.weights
    query = np.array([0.0, 1.0])
    no_acts, no_rewards = np.zeros((0, 2)), np.zeros(0)
    assert loop.observe(query, no_acts, no_rewards, 1.0) is False
    assert loop.observe(query, no_acts, no_rewards, 1.0) is False
    assert loop.pending == 2 and loop.weights is w0
    assert loop.observe(query, no_acts, no_rewards, 1.0) is True
    assert loop.pending == 0
    # three signals of [0, 1] * 1.0, averaged, times lr 1
    np.testing.assert_allclose(loop.weights.up, [[0.0, 1.0]])
    assert not w0.up.any()


def test_projector_matches_apply_for_vectors_and_batches():
    from sona_store.learning.micro_lora import MicroProjector

    rng = np.random.default_rng(5)
    for rank in (1, 2):
        base = initial_micro_lora(rank, 64)
        weights = MicroLoraWeights(
            down=base.down, up=rng.normal(size=(rank, 64)).astype(np.float32)
        )
        project = MicroProjector.of(weights)
        x = rng.normal(size=64).astype(np.float32)
        batch = rng.normal(size=(7, 64)).astype(np.float32)
        assert np.abs(project(x) - apply(weights, x)).max() <= 1e-6
        assert np.abs(project(batch) - apply(weights, batch)).max() <= 1e-6
        assert project(x).dtype == np.float32


def test_accumulate_equals_adding_one_by_one():
    from sona_store.learning.micro_lora import accumulate

    rng = np.random.default_rng(9)
    gradients = rng.normal(size=(100, 32)).astype(np.float32)
    qualities = rng.uniform(0, 1, 100).astype(np.float32)
    one_by_one = MicroAccumulator.empty(2, 32)
    for g, q in zip(gradients, qualities, strict=True):
        one_by_one.add(g, float(q))
    grad_up, count = accumulate(gradients, qualities, 2)
    assert count == one_by_one.count == 100
    assert np.array_equal(grad_up, one_by_one.grad_up)


@pytest.mark.parametrize(
    ("m", "group"), [(1000, 100), (250, 100), (100, 100), (7, 10), (30, 1), (99, 100)]
)
def test_accumulate_groups_equals_one_accumulate_per_run(m, group):
    """A flush sums every run of `group` signals at once; each run's sum must
    be bit for bit what `accumulate` (and so the reference) gives it."""
    from sona_store.learning.micro_lora import accumulate, accumulate_groups

    rng = np.random.default_rng(m + group)
    gradients = (rng.normal(size=(m, 64)) * rng.uniform(0.01, 100, (m, 1))).astype(np.float32)
    qualities = rng.uniform(0, 1, m).astype(np.float32)
    sums = accumulate_groups(gradients, qualities, 2, group)
    starts = range(0, m, group)
    assert len(sums) == len(starts)
    for (grad_up, count), start in zip(sums, starts, strict=True):
        expected, expected_count = accumulate(
            gradients[start : start + group], qualities[start : start + group], 2
        )
        assert count == expected_count
        assert np.array_equal(grad_up, expected)


def test_accumulate_groups_is_bit_identical_over_random_shapes():
    """Widths from 1 (where numpy would sum pairwise) to 300, any run length."""
    from sona_store.learning.micro_lora import accumulate, accumulate_groups

    rng = np.random.default_rng(7)
    for trial in range(300):
        m, dim, group = (int(x) for x in rng.integers(1, [1200, 300, 150]))
        dim = trial + 1 if trial < 10 else dim  # widths 1..10 always
        scale = rng.uniform(1e-3, 1e3, (m, 1))
        gradients = (rng.standard_normal((m, dim)) * scale).astype(np.float32)
        qualities = rng.random(m).astype(np.float32)
        sums = accumulate_groups(gradients, qualities, 2, group)
        for (grad_up, count), start in zip(sums, range(0, m, group), strict=True):
            expected, expected_count = accumulate(
                gradients[start : start + group], qualities[start : start + group], 2
            )
            assert count == expected_count
            assert np.array_equal(grad_up, expected), (m, dim, group)
