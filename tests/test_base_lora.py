"""Base LoRA: fixed seeded down, learned up, Hebbian update (fix for defects 2 and 3)."""

from __future__ import annotations

import numpy as np
import pytest

from sona_store.learning.base_lora import (
    DEFAULT_SEED,
    BaseLoraWeights,
    apply_update,
    fit_vector,
    flat_params,
    forward,
    hebbian_gradient,
    initial_base_lora,
    merged_delta,
)
from sona_store.learning.ewc import EwcConfig, EwcState, ewc_step, with_weights


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def tiny() -> BaseLoraWeights:
    """Two layers, rank 1, dim 3, with a hand-picked down."""
    down = np.array([[[1, 0, 2]], [[0, 1, -1]]], dtype=np.float32)
    return BaseLoraWeights(down=down, up=np.zeros_like(down), alpha=1.0)


def test_initialisation_deterministic_nonzero_and_per_layer():
    a = initial_base_lora(layers=3, rank=2, dim=16)
    b = initial_base_lora(layers=3, rank=2, dim=16)
    assert a.down.shape == a.up.shape == (3, 2, 16)
    assert a.down.dtype == a.up.dtype == np.float32
    np.testing.assert_array_equal(a.down, b.down)
    assert np.all(a.down != 0)
    assert not np.array_equal(a.down[0], a.down[1])
    assert not np.array_equal(a.down[1], a.down[2])
    np.testing.assert_array_equal(a.up, 0)
    # Layer l is default_rng(seed + l).standard_normal((rank, dim)) / sqrt(dim).
    want = np.random.default_rng(DEFAULT_SEED + 2).standard_normal((2, 16)) / 4.0
    np.testing.assert_allclose(a.down[2], want, rtol=1e-6)
    other = initial_base_lora(layers=3, rank=2, dim=16, seed=DEFAULT_SEED + 100)
    assert not np.array_equal(a.down, other.down)


def test_scale_and_shape_properties():
    w = initial_base_lora(layers=2, rank=4, dim=8)
    assert (w.layers, w.rank, w.dim, w.param_count) == (2, 4, 8, 64)
    assert w.scale == 1.0  # alpha defaults to rank
    assert initial_base_lora(layers=2, rank=2, dim=8, alpha=4.0).scale == 2.0
    assert initial_base_lora().param_count == 12 * 8 * 256 == 24576


def test_weights_are_read_only_copies():
    down = np.ones((1, 1, 3), dtype=np.float32)
    w = BaseLoraWeights(down=down, up=np.zeros_like(down), alpha=1.0)
    down[0, 0, 0] = 5
    assert w.down[0, 0, 0] == 1
    with pytest.raises(ValueError):
        w.up[0, 0, 0] = 1


def test_forward_is_identity_at_start():
    w = initial_base_lora(layers=2, rank=2, dim=8)
    x = np.arange(8, dtype=np.float32) - 3
    np.testing.assert_array_equal(forward(w, 1, x), x)
    batch = np.stack([x, 2 * x])
    np.testing.assert_array_equal(forward(w, 0, batch), batch)


def test_forward_by_hand():
    # up_0 = [[1, 1, 0]], down_0 = [[1, 0, 2]], alpha 2 (scale 2), x = [1, 2, 3]:
    # down x = 7, up^T * 7 = [7, 7, 0], out = x + 2 * [7, 7, 0] = [15, 16, 3]
    w = tiny()
    w = BaseLoraWeights(down=w.down, up=f32(1, 1, 0, 0, 0, 0).reshape(2, 1, 3), alpha=2.0)
    np.testing.assert_allclose(forward(w, 0, f32(1, 2, 3)), [15, 16, 3])
    np.testing.assert_allclose(forward(w, 1, f32(1, 2, 3)), [1, 2, 3])  # up_1 is zero


def test_merged_delta_consistent_with_forward():
    rng = np.random.default_rng(7)
    w = initial_base_lora(layers=2, rank=3, dim=5, alpha=6.0)
    w = apply_update(w, rng.standard_normal(w.param_count), 0.5)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    for layer in range(2):
        m = merged_delta(w, layer)
        assert m.shape == (5, 5)
        np.testing.assert_allclose(forward(w, layer, x), x + x @ m.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(forward(w, layer, x[1]), x[1] + m @ x[1], rtol=1e-5, atol=1e-5)


def test_hebbian_gradient_by_hand():
    # g = [1, 2, 3]: down_0 g = 1 + 0 + 6 = 7 -> 7 g = [7, 14, 21];
    # down_1 g = 0 + 2 - 3 = -1 -> -g = [-1, -2, -3]; flattened (layer, rank, dim).
    grad = hebbian_gradient(tiny(), f32(1, 2, 3))
    assert grad.shape == (6,) and grad.dtype == np.float32
    np.testing.assert_allclose(grad, [7, 14, 21, -1, -2, -3])


def test_apply_update_and_flat_params():
    w = tiny()
    new = apply_update(w, f32(1, 2, 3, 4, 5, 6), lr=0.5)
    np.testing.assert_allclose(flat_params(new), [0.5, 1, 1.5, 2, 2.5, 3])
    np.testing.assert_array_equal(flat_params(w), 0)  # the input is untouched
    np.testing.assert_array_equal(new.down, w.down)


def test_update_moves_output_toward_g():
    # After up += lr * hebbian(g): for x = g, delta = scale * up^T (down g)
    # = lr * (down g)^2 * g. Layer 0: 0.1 * 49 * g = 4.9 g; layer 1: 0.1 * 1 * g.
    w = tiny()
    g = f32(1, 2, 3)
    assert np.array_equal(forward(w, 0, g), g)
    w = apply_update(w, hebbian_gradient(w, g), lr=0.1)
    np.testing.assert_allclose(forward(w, 0, g) - g, 4.9 * g, rtol=1e-6)
    np.testing.assert_allclose(forward(w, 1, g) - g, 0.1 * g, rtol=1e-6)


def test_update_moves_output_toward_g_random_down():
    w = initial_base_lora(layers=3, rank=4, dim=32)
    g = fit_vector(np.random.default_rng(1).standard_normal(20), 32)
    g /= np.linalg.norm(g)
    w = apply_update(w, hebbian_gradient(w, g), lr=0.01)
    for layer in range(3):
        delta = forward(w, layer, g) - g
        assert np.linalg.norm(delta) > 0
        assert float(delta @ g) > 0
        # Exactly along g: lr * |down_l g|^2 * g.
        proj = w.down[layer] @ g
        np.testing.assert_allclose(delta, 0.01 * (proj @ proj) * g, rtol=1e-4, atol=1e-7)


def test_fit_vector_pads_and_cuts():
    np.testing.assert_array_equal(fit_vector(f32(1, 2), 4), [1, 2, 0, 0])
    np.testing.assert_array_equal(fit_vector(f32(1, 2, 3, 4, 5), 3), [1, 2, 3])
    with pytest.raises(ValueError):
        fit_vector(f32(1, np.nan), 3)


def test_wrong_shapes_and_non_finite_raise():
    w = tiny()
    with pytest.raises(ValueError, match="expected length 3"):
        hebbian_gradient(w, f32(1, 2))
    with pytest.raises(ValueError, match="expected length 6"):
        apply_update(w, f32(1, 2, 3), 0.1)
    with pytest.raises(ValueError):
        apply_update(w, f32(1, 2, 3, 4, 5, np.inf), 0.1)
    with pytest.raises(ValueError):
        forward(w, 0, f32(1, 2))
    with pytest.raises(ValueError):
        forward(w, 2, f32(1, 2, 3))
    with pytest.raises(ValueError):
        hebbian_gradient(w, f32(np.nan, 0, 0))


def test_ewc_engages_on_the_hebbian_gradient():
    # Defect 2: the vector fed to EWC++ now has exactly param_count entries, so the
    # Fisher actually moves (in the reference every call returned unchanged).
    w = tiny()
    cfg = EwcConfig(param_count=w.param_count, fisher_ema_decay=0.5)
    state = EwcState.initial(cfg)
    raw = hebbian_gradient(w, f32(1, 2, 3))
    state, constrained, boundary = ewc_step(state, raw, cfg)
    assert not boundary
    np.testing.assert_array_equal(constrained, raw)  # nothing remembered yet
    np.testing.assert_allclose(state.fisher, 0.5 * raw**2)  # [24.5, 98, 220.5, 0.5, 2, 4.5]
    w = apply_update(w, constrained, 0.1)
    state = with_weights(state, flat_params(w))
    np.testing.assert_allclose(state.weights, 0.1 * raw)
