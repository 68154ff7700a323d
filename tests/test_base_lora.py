"""Base LoRA: fixed seeded down, learned up, sign-aware bounded proximal update (fix for
defects 2 and 3; docs/learning.md)."""

from __future__ import annotations

import numpy as np
import pytest

from sona_store import SonaConfig
from sona_store.learning.base_lora import (
    DEFAULT_SEED,
    BaseLoraWeights,
    channel_activity,
    channel_projection,
    fit_vector,
    flat_params,
    forward,
    initial_base_lora,
    pattern_drive,
    proximal_step,
    with_params,
)
from sona_store.learning.ewc import EwcConfig, EwcState, ewc_step, with_weights

from .oracles.base_lora import merged_delta


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
    defaults = SonaConfig()
    fresh = initial_base_lora(
        defaults.base_lora_layers, defaults.base_lora_rank, defaults.hidden_dim
    )
    assert fresh.param_count == defaults.base_lora_param_count == 12 * 8 * 256 == 24576


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
    w = with_params(w, 0.5 * rng.standard_normal(w.param_count))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    for layer in range(2):
        m = merged_delta(w, layer)
        assert m.shape == (5, 5)
        np.testing.assert_allclose(forward(w, layer, x), x + x @ m.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(forward(w, layer, x[1]), x[1] + m @ x[1], rtol=1e-5, atol=1e-5)


def test_channel_projection_and_activity_by_hand():
    # c = [1, 2, 3] (norm sqrt 14). Layer 0's row [1, 0, 2] (norm sqrt 5): 7; layer 1's
    # row [0, 1, -1] (norm sqrt 2): -1. Cosines times sqrt(dim) = sqrt 3.
    proj = channel_projection(tiny(), f32(1, 2, 3)[None, :])
    expected = np.array([7 / np.sqrt(14 * 5), -1 / np.sqrt(14 * 2)]) * np.sqrt(3)
    assert proj.shape == (1, 2, 1)
    np.testing.assert_allclose(proj.reshape(-1), expected, rtol=1e-6)
    act = channel_activity(tiny(), f32(1, 2, 3)[None, :])
    np.testing.assert_allclose(act.reshape(-1), [expected[0], 0.0], rtol=1e-6)


def test_pattern_drive_by_hand():
    w = tiny()
    c1, c2 = f32(1, 2, 3), f32(0, 1, -1)
    drive = pattern_drive(w, np.stack([c1, c2]), signs=f32(1.0, -0.5), shares=f32(0.75, 0.25))
    proj = np.stack(
        [
            [
                w.down[layer, 0] @ c / np.linalg.norm(w.down[layer, 0]) / np.linalg.norm(c)
                for layer in range(2)
            ]
            for c in (c1, c2)
        ]
    ) * np.sqrt(3)  # (pattern, layer)
    h = np.maximum(proj, 0)
    units = np.stack([c1 / np.linalg.norm(c1), c2 / np.linalg.norm(c2)])
    shares, signs = np.array([0.75, 0.25]), np.array([1.0, -0.5])
    np.testing.assert_allclose(drive.activity[:, 0], shares @ h, rtol=1e-6)
    np.testing.assert_allclose(drive.fisher[:, 0], shares @ proj**2, rtol=1e-6)
    for layer in range(2):
        want = sum(shares[p] * h[p, layer] * signs[p] * units[p] for p in range(2))
        np.testing.assert_allclose(drive.drive[layer, 0], want, rtol=1e-6, atol=1e-7)
    assert drive.flat_curvature().shape == drive.flat_fisher().shape == (w.param_count,)


def test_proximal_step_by_hand_and_with_params():
    up, d, a = f32(1, 0, 2, 0), f32(2, 2, 0, 0), f32(4, 4, 0, 1)
    out = proximal_step(up, d, a, 0.25)
    np.testing.assert_allclose(out, [(1 + 0.5) / 2, 0.5 / 2, 2, 0], rtol=1e-6)
    pull, weight = np.array([0, 0, 2.0, 0]), np.array([0, 0, 4.0, 0])
    out = proximal_step(up, d, a, 0.25, anchor_pull=pull, anchor_weight=weight)
    np.testing.assert_allclose(out[2], (2 + 0.5) / 2, rtol=1e-6)  # pulled toward 0.5
    w = with_params(tiny(), f32(1, 2, 3, 4, 5, 6))
    np.testing.assert_array_equal(flat_params(w), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(w.down, tiny().down)
    with pytest.raises(ValueError, match="learning rate"):
        proximal_step(up, d, a, float("nan"))


def test_step_moves_output_toward_a_pulling_pattern_and_away_from_a_pushing_one():
    w = initial_base_lora(layers=3, rank=4, dim=32)
    g = fit_vector(np.random.default_rng(1).standard_normal(20), 32)
    g /= np.linalg.norm(g)
    for sign in (1.0, -1.0):
        drive = pattern_drive(w, g[None, :], f32(sign), f32(1.0))
        moved = with_params(
            w, proximal_step(flat_params(w), drive.flat_drive(), drive.flat_curvature(), 0.01)
        )
        for layer in range(3):
            delta = forward(moved, layer, g) - g
            # Each driven row moved lr*A/(1+lr*A) of the way to sign * g.
            assert np.sign(float(delta @ g)) == sign
            np.testing.assert_allclose(delta / np.linalg.norm(delta), sign * g, atol=1e-5)


def test_fit_vector_pads_and_cuts():
    np.testing.assert_array_equal(fit_vector(f32(1, 2), 4), [1, 2, 0, 0])
    np.testing.assert_array_equal(fit_vector(f32(1, 2, 3, 4, 5), 3), [1, 2, 3])
    with pytest.raises(ValueError):
        fit_vector(f32(1, np.nan), 3)


def test_wrong_shapes_and_non_finite_raise():
    w = tiny()
    with pytest.raises(ValueError, match="expected length 6"):
        with_params(w, f32(1, 2, 3))
    with pytest.raises(ValueError):
        with_params(w, f32(1, 2, 3, 4, 5, np.inf))
    with pytest.raises(ValueError):
        forward(w, 0, f32(1, 2))
    with pytest.raises(ValueError):
        forward(w, 2, f32(1, 2, 3))
    with pytest.raises(ValueError):
        channel_projection(w, f32(np.nan, 0, 0)[None, :])
    with pytest.raises(ValueError):
        channel_projection(w, f32(1, 2)[None, :])
    with pytest.raises(ValueError, match="one sign"):
        pattern_drive(w, f32(1, 2, 3)[None, :], f32(1, 1), f32(1))


def test_ewc_engages_on_the_drive():
    # Defect 2: the vectors fed to EWC++ have exactly param_count entries, so the
    # Fisher actually moves (in the reference every call returned unchanged).
    w = tiny()
    cfg = EwcConfig(param_count=w.param_count, fisher_ema_decay=0.5)
    state = EwcState.initial(cfg)
    drive = pattern_drive(w, f32(1, 2, 3)[None, :], f32(1), f32(1))
    state, boundary = ewc_step(state, drive.flat_drive(), drive.flat_fisher(), cfg)
    assert not boundary
    np.testing.assert_allclose(state.fisher, 0.5 * drive.flat_fisher())
    assert state.fisher[3:].max() > 0  # layer 1 is not driven, but its outputs depend on it
    up = proximal_step(flat_params(w), drive.flat_drive(), drive.flat_curvature(), 0.1)
    state = with_weights(state, up)
    np.testing.assert_array_equal(state.weights, up)
