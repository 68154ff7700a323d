"""The base LoRA adapter (12 layers), redesigned so that it actually adapts.

The reference starts every layer's `down` at zero, so `up` never reaches the output, and
its update writes only the first dim/12 entries of each layer (docs/reference.md#known-defects-and-our-fixes,
defect 3). Here
each layer's `down` (rank x dim) is a fixed, seeded random projection, and only `up`
(rank x dim, starting at zero) is learned, by a sign-aware, bounded rule: each of a
cycle's patterns is a signed target (`pattern_drive`) for the rows its direction drives,
and `proximal_step` moves every row part of the way to its target (and to EWC++'s
anchors), so no row ever grows past norm max(1, its own). docs/learning.md has the math.

The learned parameters are every layer's `up`, flattened in (layer, rank, dim) order:
that vector, of layers * rank * dim entries, is what EWC++ tracks (fixing defect 2).

`scale` = alpha / rank, with alpha defaulting to rank, so scale is 1 unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sona_store.errors import ValidationError

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
    layers: int,
    rank: int,
    dim: int,
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


def channel_projection(weights: BaseLoraWeights, directions: np.ndarray) -> np.ndarray:
    """Each channel's response to each direction, shape (P, layers, rank):
    cos(down_l[k], c_p) * sqrt(dim). The cosine of two random directions has a spread
    of 1/sqrt(dim), so the factor puts a chance-level projection at about 1 at any dim."""
    arr = np.asarray(directions, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != weights.dim:
        raise ValidationError(
            f"expected (n, {weights.dim}) directions, got shape {arr.shape}", field="directions"
        )
    _finite(arr, "directions")
    norms = np.linalg.norm(arr, axis=1)
    unit = arr / np.where(norms > 0, norms, 1.0)[:, None]
    row_norms = np.linalg.norm(weights.down, axis=2)  # (layers, rank)
    cos = np.einsum("lkd,pd->plk", weights.down, unit) / np.where(row_norms > 0, row_norms, 1.0)
    projection: np.ndarray = (cos * np.sqrt(weights.dim)).astype(np.float32)
    return projection


def channel_activity(weights: BaseLoraWeights, directions: np.ndarray) -> np.ndarray:
    """How strongly each direction drives each channel: relu(channel_projection).
    The relu is what makes the rule sign-aware: c and -c drive disjoint channels, so
    what is learned from one is not learned, bit for bit, from the other."""
    activity: np.ndarray = np.maximum(channel_projection(weights, directions), np.float32(0.0))
    return activity


@dataclass(frozen=True)
class Drive:
    """What one cycle's patterns ask of the adapter, per channel (layer l, rank row k):
    `activity` A (layers, rank) and `drive` D (layers, rank, dim), so that the target
    row is T = D / A, an activity-weighted mean of the signed unit directions
    (norm <= 1). The surrogate loss is sum_lk A_lk / 2 * |up_lk - T_lk|^2: its gradient
    is A * up - D and its curvature (diagonal Hessian, = Fisher of the matching
    Gaussian) is A, constant along each row."""

    activity: np.ndarray  # (layers, rank) float32, >= 0
    drive: np.ndarray  # (layers, rank, dim) float32
    # (layers, rank): sum_p w_p * projection_p^2, the Fisher of the adapter's output
    # (unit Gaussian noise) on the cycle's inputs, for every entry of the row: how much
    # the outputs on these inputs depend on that row, whatever the projection's sign.
    fisher: np.ndarray

    def flat_drive(self) -> np.ndarray:
        return self.drive.reshape(-1).astype(np.float32)

    def flat_curvature(self) -> np.ndarray:
        """A broadcast over dim, in flat_params order: the proximal step's curvature."""
        return np.repeat(self.activity.reshape(-1), self.drive.shape[2]).astype(np.float32)

    def flat_fisher(self) -> np.ndarray:
        """`fisher` broadcast over dim, in flat_params order: what EWC++ folds in."""
        return np.repeat(self.fisher.reshape(-1), self.drive.shape[2]).astype(np.float32)


def pattern_drive(
    weights: BaseLoraWeights, directions: np.ndarray, signs: np.ndarray, shares: np.ndarray
) -> Drive:
    """The Drive of P patterns: unit directions c_p (padded to dim), signed strengths
    s_p in [-1, 1] (quality above the threshold pulls, below pushes) and shares w_p
    (cluster size / window size). A = sum_p w_p h_p, D = sum_p w_p h_p s_p c_p, with
    h = channel_activity, and fisher = sum_p w_p channel_projection_p^2."""
    signs = np.asarray(signs, dtype=np.float64)
    shares = np.asarray(shares, dtype=np.float64)
    arr = np.asarray(directions, dtype=np.float64)
    if not (signs.shape == shares.shape == (arr.shape[0],)):
        raise ValidationError("need one sign and one share per direction", field="signs")
    if not (np.isfinite(signs).all() and np.isfinite(shares).all()) or (shares < 0).any():
        raise ValidationError("signs and shares must be finite, shares >= 0", field="shares")
    norms = np.linalg.norm(arr, axis=1)
    unit = arr / np.where(norms > 0, norms, 1.0)[:, None]
    projection = channel_projection(weights, unit).astype(np.float64)  # (P, layers, rank)
    weighted = np.maximum(projection, 0.0) * shares[:, None, None]
    activity = weighted.sum(axis=0)
    signed = weighted * np.clip(signs, -1.0, 1.0)[:, None, None]
    # (P, layers*rank)^T @ (P, dim): one matrix product instead of a 3-operand einsum.
    layers, rank = activity.shape
    drive = (signed.reshape(len(unit), -1).T @ unit).reshape(layers, rank, -1)
    fisher = np.tensordot(shares, projection * projection, axes=1)
    return Drive(
        activity=activity.astype(np.float32),
        drive=drive.astype(np.float32),
        fisher=fisher.astype(np.float32),
    )


def proximal_step(
    up: np.ndarray,
    drive: np.ndarray,
    curvature: np.ndarray,
    lr: float,
    anchor_pull: np.ndarray | None = None,
    anchor_weight: np.ndarray | None = None,
) -> np.ndarray:
    """One implicit (proximal) step of rate lr on the surrogate loss plus EWC++'s
    anchored penalty, all flat (layers * rank * dim,) float32:

        up' = (up + lr * D + lr * P) / (1 + lr * A + lr * W)

    with P = lambda * sum_t F_t * anchor_t and W = lambda * sum_t F_t (zeros when
    no task is remembered). up' is a convex combination of up, the target row
    T = D / A and the anchors, so no row's norm ever exceeds the largest of its
    own, 1 and the anchors': the adapter is bounded whatever the rate or the
    number of cycles, and a gradient step's overshoot cannot happen."""
    if not (np.isfinite(lr) and lr >= 0):
        raise ValidationError(f"learning rate must be finite and >= 0, got {lr}", field="lr")
    lr64 = float(lr)
    num = up.astype(np.float64) + lr64 * drive.astype(np.float64)
    den = 1.0 + lr64 * curvature.astype(np.float64)
    if anchor_pull is not None and anchor_weight is not None:
        num = num + lr64 * anchor_pull.astype(np.float64)
        den = den + lr64 * anchor_weight.astype(np.float64)
    out = (num / den).astype(np.float32)
    _finite(out, "update")
    return out


def with_params(weights: BaseLoraWeights, flat: np.ndarray) -> BaseLoraWeights:
    """A new adapter whose up is `flat` (flat_params order); down and alpha kept."""
    arr = np.asarray(flat)
    if arr.ndim != 1 or arr.shape[0] != weights.param_count:
        raise ValidationError(
            f"expected length {weights.param_count} (layers*rank*dim), got shape {arr.shape}",
            field="update",
        )
    return BaseLoraWeights(down=weights.down, up=arr.reshape(weights.up.shape), alpha=weights.alpha)


def flat_params(weights: BaseLoraWeights) -> np.ndarray:
    """The learned parameters (every layer's up) flattened in (layer, rank, dim) order:
    the vector EWC++ tracks as its current weights."""
    params: np.ndarray = weights.up.reshape(-1).copy()
    return params
