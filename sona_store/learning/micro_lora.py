"""Loop A's micro-LoRA: a rank-1/2 adapter that learns from every finished
trajectory (docs/reference.md#micro-lora).

The pieces are split so a persistence layer can version them:

- `MicroLoraWeights` is an immutable value (read-only arrays): every update
  makes a new one, so each version can be stored and rolled back to.
- `accumulate_groups` sums a batch of signals in runs of the flush threshold
  and `update_delta` turns each run into the change to `up`; `apply_groups`
  applies them in order, as the reference's instant loop applies every
  `micro_flush_threshold` signals. Deltas of several processes add, so each
  can apply its own to the stored weights.
- `MicroProjector` serves the adapter (`x + delta`).

All arithmetic is float32 in the reference's operation order (sequential
sums, ``lr / count`` computed first), which reproduces the published npm
build's outputs bit for bit rather than merely within tolerance. The
reference's own one-signal-at-a-time loop is kept in tests/oracles/, which
these batched functions are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GOLDEN_RATIO_STEP = np.float32(0.618033988749895)  # the same float32 as 0.618034
INIT_SPREAD = np.float32(0.02)
MIN_RANK, MAX_RANK = 1, 2


def _frozen_f32(array: np.ndarray) -> np.ndarray:
    """A read-only float32 copy, so a stored version cannot change under it."""
    out = np.array(array, dtype=np.float32, copy=True, order="C")
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class MicroLoraWeights:
    """One version of the adapter: `down` and `up`, both (rank, dim) float32.

    The arrays are copied and made read-only; build a new object to change them.
    """

    down: np.ndarray
    up: np.ndarray

    def __post_init__(self) -> None:
        down, up = _frozen_f32(self.down), _frozen_f32(self.up)
        if down.ndim != 2 or down.shape != up.shape:
            raise ValueError(
                f"down and up must both be (rank, dim); got {down.shape} and {up.shape}"
            )
        if not MIN_RANK <= down.shape[0] <= MAX_RANK or down.shape[1] < 1:
            raise ValueError(f"micro-LoRA rank must be 1 or 2 and dim >= 1; got {down.shape}")
        if not (np.isfinite(down).all() and np.isfinite(up).all()):
            # No version with NaN or an infinity is ever built, so none is stored.
            raise ValueError("micro-LoRA weights contain NaN or infinite values")
        object.__setattr__(self, "down", down)
        object.__setattr__(self, "up", up)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def dim(self) -> int:
        return int(self.down.shape[1])

    @property
    def scale(self) -> np.float32:
        """1/sqrt(rank), in float32 as the reference stores it."""
        scale: np.float32 = np.float32(1.0) / np.sqrt(np.float32(self.rank))
        return scale


def initial_micro_lora(rank: int, dim: int) -> MicroLoraWeights:
    """Fresh adapter: `down[i] = ((i * 0.618034) mod 1 - 0.5) * 0.02` over the
    flat index i (float32, as the reference), `up` zero so it starts inert."""
    if not MIN_RANK <= rank <= MAX_RANK:
        raise ValueError(f"micro-LoRA rank must be 1 or 2, got {rank}")
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    index = np.arange(rank * dim, dtype=np.float32)
    frac = np.fmod(index * GOLDEN_RATIO_STEP, np.float32(1.0))
    down = ((frac - np.float32(0.5)) * INIT_SPREAD).reshape(rank, dim)
    return MicroLoraWeights(down=down, up=np.zeros((rank, dim), dtype=np.float32))


def update_delta(grad_up: np.ndarray, count: int, lr: float) -> np.ndarray:
    """The change to `up` for a pending gradient: `grad_up * (lr / count)`.

    `lr / count` is rounded to float32 first, as the reference does. Zeros
    when count is 0. Deltas of separate accumulators can be summed.
    """
    g = np.asarray(grad_up, dtype=np.float32)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return np.zeros_like(g)
    step: np.ndarray = g * (np.float32(lr) / np.float32(count))
    return step


def apply_update(
    weights: MicroLoraWeights, grad_up: np.ndarray, count: int, lr: float
) -> MicroLoraWeights:
    """New weights with `up + update_delta(...)`; the same object when count is 0."""
    if np.shape(grad_up) != weights.up.shape:
        raise ValueError(f"grad_up must have shape {weights.up.shape}, got {np.shape(grad_up)}")
    if count == 0:
        return weights
    return MicroLoraWeights(down=weights.down, up=weights.up + update_delta(grad_up, count, lr))


@dataclass(frozen=True, eq=False)
class MicroProjector:
    """The forward pass `x + scale * sum_r (x . down_r) * up_r` for serving:
    two BLAS products instead of the reference's sequential sums (the
    reference's order is not needed for an output nothing is stored from),
    within float32 rounding (about 1e-7) of them. Built once per weights
    version."""

    down: np.ndarray  # (rank, dim)
    lifted: np.ndarray  # (dim, rank): (up * scale).T

    @classmethod
    def of(cls, weights: MicroLoraWeights) -> MicroProjector:
        lifted = np.ascontiguousarray((weights.up * weights.scale).T, dtype=np.float32)
        return cls(down=weights.down, lifted=lifted)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray
        if x.ndim == 1:
            out = x + self.lifted @ (self.down @ x)
        else:
            out = x + (x @ self.down.T) @ self.lifted.T
        return out


def accumulate(gradients: np.ndarray, qualities: np.ndarray, rank: int) -> tuple[np.ndarray, int]:
    """The reference's pending gradient after adding each (gradient, quality)
    in order, `grad_up[r] += gradient * quality` for every rank row, computed
    at once: the float32 running sum in index order (`cumsum` never reorders),
    so the result is bit for bit the one-at-a-time sum."""
    g = np.asarray(gradients, dtype=np.float32)
    q = np.asarray(qualities, dtype=np.float32)
    if g.ndim != 2 or len(q) != len(g):
        raise ValueError(f"need (m, dim) gradients and m qualities, got {g.shape}, {q.shape}")
    if not (np.isfinite(g).all() and np.isfinite(q).all()):
        raise ValueError("gradient and quality must be finite")
    if len(g) == 0:
        return np.zeros((rank, g.shape[1]), dtype=np.float32), 0
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.cumsum(g * q[:, None], axis=0, dtype=np.float32)[-1]
    _check_sum(total)
    return np.repeat(total[None, :], rank, axis=0), len(g)


def _check_sum(total: np.ndarray) -> None:
    if not np.isfinite(total).all():
        raise ValueError("the accumulated micro-LoRA gradient overflows float32")


MIN_REDUCE_WIDTH = 8  # narrower signals are summed run by run with cumsum


def accumulate_groups(
    gradients: np.ndarray, qualities: np.ndarray, rank: int, group: int
) -> list[tuple[np.ndarray, int]]:
    """`accumulate` of each run of `group` consecutive signals (the last run may
    be shorter), as a flush applies them: the full runs are summed in one
    numpy call, with the same in-order float32 additions."""
    g = np.asarray(gradients, dtype=np.float32)
    q = np.asarray(qualities, dtype=np.float32)
    if g.ndim != 2 or len(q) != len(g) or group < 1:
        raise ValueError(f"need (m, dim) gradients, m qualities, group >= 1; got {g.shape}")
    if not (np.isfinite(g).all() and np.isfinite(q).all()):
        raise ValueError("gradient and quality must be finite")
    full = len(g) // group
    sums: list[tuple[np.ndarray, int]] = []
    if full and g.shape[1] >= MIN_REDUCE_WIDTH:
        runs = (g[: full * group] * q[: full * group, None]).reshape(full, group, g.shape[1])
        # A reduction over a non-contiguous axis adds the rows in order into
        # one accumulator per column (numpy sums pairwise only along the
        # contiguous axis), so this is each run's sequential float32 sum;
        # tests/test_micro_lora_core.py checks it against `accumulate`.
        with np.errstate(over="ignore", invalid="ignore"):
            totals = np.add.reduce(runs, axis=1, dtype=np.float32)
        _check_sum(totals)
        sums += [(np.repeat(total[None, :], rank, axis=0), group) for total in totals]
    elif full:  # a single column is the contiguous axis: numpy would pair it
        starts = range(0, full * group, group)
        sums += [accumulate(g[s : s + group], q[s : s + group], rank) for s in starts]
    if len(g) > full * group:
        sums.append(accumulate(g[full * group :], q[full * group :], rank))
    return sums


def apply_groups(
    weights: MicroLoraWeights,
    gradients: np.ndarray,
    qualities: np.ndarray,
    group: int,
    lr: float,
) -> MicroLoraWeights:
    """Apply signals in order, in runs of `group` (each averaged on its own),
    as a flush does: the reference's instant loop applying every `group`
    signals. A quarantine's replay calls this too, so both agree to the bit."""
    for grad_up, count in accumulate_groups(gradients, qualities, weights.rank, group):
        weights = apply_update(weights, grad_up, count, lr)
    return weights
