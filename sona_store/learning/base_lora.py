"""The base LoRA adapter (12 layers), redesigned so that it actually adapts.

The reference starts every layer's `down` at zero, so `up` never reaches the output, and
its update writes only the first dim/12 entries of each layer (SEED.md, defect 3). Here
each layer's `down` (rank x dim) is a fixed, seeded random projection, and only `up`
(rank x dim, starting at zero) is learned, by a Hebbian update driven by the cycle's
pattern gradient g:

    up_l[k, :] += lr * (down_l g)_k * g

For an input x near g the output delta `scale * up_l^T (down_l x)` then points toward g.
The learned parameters are every layer's `up`, flattened in (layer, rank, dim) order:
that vector, of layers * rank * dim entries, is what EWC++ tracks (fixing defect 2).

`scale` = alpha / rank, with alpha defaulting to rank, so scale is 1 unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sona_store.errors import ValidationError

DEFAULT_LAYERS = 12
# Seed of layer 0's projection; layer l uses DEFAULT_SEED + l. Changing it changes every
# fresh adapter, so it is fixed here; stored adapters keep their own `down` regardless.
DEFAULT_SEED = 0x50A  # 1290


def _finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        raise ValidationError("contains NaN or infinite values", field=name)


@dataclass(frozen=True)
class BaseLoraWeights:
    """One adapter: `down` and `up`, each (layers, rank, dim) float32, and alpha.
    Immutable: both arrays are private read-only float32 copies."""

    down: np.ndarray  # (layers, rank, dim) float32, fixed
    up: np.ndarray  # (layers, rank, dim) float32, learned
    alpha: float

    def __post_init__(self) -> None:
        down = np.array(self.down, dtype=np.float32)
        up = np.array(self.up, dtype=np.float32)
        if down.ndim != 3 or down.shape != up.shape or 0 in down.shape:
            raise ValidationError(
                f"down and up must share one non-empty (layers, rank, dim) shape, "
                f"got {down.shape} and {up.shape}",
                field="base_lora",
            )
        _finite(down, "down")
        _finite(up, "up")
        if not (np.isfinite(self.alpha) and self.alpha > 0):
            raise ValidationError(f"alpha must be positive and finite, got {self.alpha}")
        down.flags.writeable = False
        up.flags.writeable = False
        object.__setattr__(self, "down", down)
        object.__setattr__(self, "up", up)
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def layers(self) -> int:
        return int(self.down.shape[0])

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    @property
    def dim(self) -> int:
        return int(self.down.shape[2])

    @property
    def scale(self) -> float:
        """alpha / rank: the usual LoRA scaling, 1 with the default alpha."""
        return self.alpha / self.rank

    @property
    def param_count(self) -> int:
        """Number of learned parameters (EwcConfig.param_count): layers * rank * dim."""
        return int(self.up.size)


def initial_base_lora(
    layers: int = DEFAULT_LAYERS,
    rank: int = 8,
    dim: int = 256,
    alpha: float | None = None,
    seed: int = DEFAULT_SEED,
) -> BaseLoraWeights:
    """A fresh adapter: down[l] = default_rng(seed + l).standard_normal((rank, dim)) /
    sqrt(dim) (float64 draws, then float32), so each row has norm near 1 and every layer
    differs; up all zeros, so the adapter starts as the identity. alpha defaults to rank."""
    if layers < 1 or rank < 1 or dim < 1:
        raise ValidationError(f"layers, rank and dim must be >= 1, got {layers}, {rank}, {dim}")
    # One generator per layer (a loop over layers, not parameters), so that layer l's
    # projection does not depend on how many layers the adapter has.
    draws = [np.random.default_rng(seed + i).standard_normal((rank, dim)) for i in range(layers)]
    down = np.stack(draws)
    down = (down / np.sqrt(dim)).astype(np.float32)
    up = np.zeros((layers, rank, dim), dtype=np.float32)
    return BaseLoraWeights(down=down, up=up, alpha=float(rank if alpha is None else alpha))


def fit_vector(g: np.ndarray, dim: int) -> np.ndarray:
    """g as float32 of exactly dim entries, zero-padded or cut at the end. The pattern
    gradient has embedding_dim entries and the adapter hidden_dim (equal in every preset);
    this is the one place where a length mismatch is bridged on purpose."""
    arr = np.asarray(g)
    if arr.ndim != 1:
        raise ValidationError(f"expected a 1-D vector, got shape {arr.shape}", field="gradient")
    arr = arr.astype(np.float32)
    _finite(arr, "gradient")
    out = np.zeros(dim, dtype=np.float32)
    n = min(dim, arr.shape[0])
    out[:n] = arr[:n]
    return out


def _check_layer(weights: BaseLoraWeights, layer_idx: int) -> None:
    if not 0 <= layer_idx < weights.layers:
        raise ValidationError(
            f"layer index {layer_idx} out of range 0..{weights.layers - 1}", field="layer_idx"
        )


def forward(weights: BaseLoraWeights, layer_idx: int, x: np.ndarray) -> np.ndarray:
    """x + scale * up[l]^T (down[l] x), for x of shape (dim,) or (n, dim)."""
    _check_layer(weights, layer_idx)
    arr = np.asarray(x)
    if arr.ndim not in (1, 2) or arr.shape[-1] != weights.dim:
        raise ValidationError(
            f"expected shape ({weights.dim},) or (n, {weights.dim}), got {arr.shape}", field="x"
        )
    arr = arr.astype(np.float32)
    _finite(arr, "x")
    down, up = weights.down[layer_idx], weights.up[layer_idx]
    # Row form works for both shapes: (x down^T) up == (up^T (down x))^T.
    delta = (arr @ down.T) @ up
    out: np.ndarray = (arr + np.float32(weights.scale) * delta).astype(np.float32)
    return out


def merged_delta(weights: BaseLoraWeights, layer_idx: int) -> np.ndarray:
    """The dense (dim, dim) matrix W = scale * up[l]^T down[l], so forward(x) == x + W x;
    for inspection and tests, not the hot path."""
    _check_layer(weights, layer_idx)
    w = np.float32(weights.scale) * (weights.up[layer_idx].T @ weights.down[layer_idx])
    out: np.ndarray = w.astype(np.float32)
    return out


def hebbian_gradient(weights: BaseLoraWeights, g: np.ndarray) -> np.ndarray:
    """Per-parameter gradient of `up`, shape (layers * rank * dim,): entry (l, k, i) is
    (down_l g)_k * g_i. g must have exactly dim entries (use fit_vector first)."""
    arr = np.asarray(g)
    if arr.ndim != 1 or arr.shape[0] != weights.dim:
        raise ValidationError(
            f"expected length {weights.dim} (dim), got shape {arr.shape}", field="gradient"
        )
    arr = arr.astype(np.float32)
    _finite(arr, "gradient")
    projected = weights.down @ arr  # (layers, rank)
    grad = projected[:, :, None] * arr[None, None, :]
    out: np.ndarray = grad.reshape(-1).astype(np.float32)
    return out


def apply_update(weights: BaseLoraWeights, flat_update: np.ndarray, lr: float) -> BaseLoraWeights:
    """A new adapter with up += lr * flat_update (reshaped to up's shape); down unchanged.
    flat_update is usually the EWC-constrained Hebbian gradient."""
    arr = np.asarray(flat_update)
    if arr.ndim != 1 or arr.shape[0] != weights.param_count:
        raise ValidationError(
            f"expected length {weights.param_count} (layers*rank*dim), got shape {arr.shape}",
            field="update",
        )
    arr = arr.astype(np.float32)
    _finite(arr, "update")
    if not np.isfinite(lr):
        raise ValidationError(f"learning rate must be finite, got {lr}", field="lr")
    up = weights.up + arr.reshape(weights.up.shape) * np.float32(lr)
    return BaseLoraWeights(down=weights.down, up=up, alpha=weights.alpha)


def flat_params(weights: BaseLoraWeights) -> np.ndarray:
    """The learned parameters (every layer's up) flattened in (layer, rank, dim) order:
    the vector EWC++ tracks as its current weights."""
    params: np.ndarray = weights.up.reshape(-1).copy()
    return params
