"""Loop A's micro-LoRA: a rank-1/2 adapter that learns from every finished
trajectory (SEED.md, "Loop A", steps 2 and 3).

The pieces are split so a persistence layer can version them:

- `MicroLoraWeights` is an immutable value (read-only arrays): every update
  makes a new one, so each version can be stored and rolled back to.
- `MicroAccumulator` is the pending gradient a process gathers locally;
  `update_delta` turns it into the change to `up`. Deltas of several
  processes add, so each can apply its own to the stored weights.
- `InstantLoop` ties them together in memory, as the reference's loop does.

All arithmetic is float32 in the reference's operation order (sequential
sums, ``lr / count`` computed first), which reproduces the published npm
build's outputs bit for bit rather than merely within tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sona_store.learning.signal import learning_signal

GOLDEN_RATIO_STEP = np.float32(0.618033988749895)  # the same float32 as 0.618034
INIT_SPREAD = np.float32(0.02)
MIN_RANK, MAX_RANK = 1, 2
DEFAULT_FLUSH_THRESHOLD = 100


def _frozen_f32(array: np.ndarray) -> np.ndarray:
    """A read-only float32 copy, so a stored version cannot change under it."""
    out = np.array(array, dtype=np.float32, copy=True, order="C")
    out.flags.writeable = False
    return out


def _sequential_sum(values: np.ndarray, axis: int) -> np.ndarray:
    """Float32 sum in index order along `axis`, as the reference's loops add."""
    return np.cumsum(values, axis=axis, dtype=np.float32).take(-1, axis=axis)


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
        return np.float32(1.0) / np.sqrt(np.float32(self.rank))


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


def apply(weights: MicroLoraWeights, x: np.ndarray) -> np.ndarray:
    """`x + scale * sum_r (x . down_r) * up_r` for one vector (dim,) or a
    batch (n, dim); returns a new float32 array of the same shape."""
    xs = np.asarray(x, dtype=np.float32)
    if xs.ndim not in (1, 2) or xs.shape[-1] != weights.dim:
        raise ValueError(f"input must be ({weights.dim},) or (n, {weights.dim}); got {xs.shape}")
    batch = np.atleast_2d(xs)
    # (n, rank): each row's projection on each down row, summed left to right.
    projected = _sequential_sum(batch[:, None, :] * weights.down[None, :, :], axis=2)
    # (n, dim): sum over rank rows in order, then scaled, then added to x.
    lifted = _sequential_sum(projected[:, :, None] * weights.up[None, :, :], axis=1)
    out = batch + lifted * weights.scale
    return out.reshape(xs.shape)


@dataclass
class MicroAccumulator:
    """Pending gradient for `up` that one process gathers before a flush.

    Float32 like the reference's accumulator (parity needs the same rounding).
    """

    grad_up: np.ndarray
    count: int = 0
    _dim: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.grad_up = np.array(self.grad_up, dtype=np.float32, copy=True, order="C")
        if self.grad_up.ndim != 2:
            raise ValueError(f"grad_up must be (rank, dim), got {self.grad_up.shape}")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        self._dim = int(self.grad_up.shape[1])

    @classmethod
    def empty(cls, rank: int, dim: int) -> MicroAccumulator:
        """A zeroed accumulator for an adapter of that shape."""
        return cls(grad_up=np.zeros((rank, dim), dtype=np.float32), count=0)

    def add(self, gradient: np.ndarray, quality: float) -> None:
        """`grad_up[r, :] += gradient * quality` for every rank row; count += 1.

        Rejects a gradient of the wrong length or with NaN/inf values (the
        reference silently ignores the first and lets the second poison `up`).
        """
        g = np.asarray(gradient, dtype=np.float32)
        q = np.float32(quality)
        if g.shape != (self._dim,):
            raise ValueError(f"gradient must have shape ({self._dim},), got {g.shape}")
        if not (np.isfinite(q) and np.isfinite(g).all()):
            raise ValueError("gradient and quality must be finite")
        with np.errstate(over="ignore", invalid="ignore"):
            grad_up = self.grad_up + (g * q)[None, :]
        _check_sum(grad_up)
        self.grad_up = grad_up
        self.count += 1

    def take(self) -> tuple[np.ndarray, int]:
        """Hand over (grad_up, count) and start again from zero."""
        taken = (self.grad_up, self.count)
        self.grad_up = np.zeros_like(taken[0])
        self.count = 0
        return taken


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
    return g * (np.float32(lr) / np.float32(count))


def apply_update(
    weights: MicroLoraWeights, grad_up: np.ndarray, count: int, lr: float
) -> MicroLoraWeights:
    """New weights with `up + update_delta(...)`; the same object when count is 0."""
    if np.shape(grad_up) != weights.up.shape:
        raise ValueError(f"grad_up must have shape {weights.up.shape}, got {np.shape(grad_up)}")
    if count == 0:
        return weights
    return MicroLoraWeights(down=weights.down, up=weights.up + update_delta(grad_up, count, lr))


class InstantLoop:
    """Loop A in memory: signal -> accumulate -> apply every `flush_threshold`
    signals (or on `flush`), as the reference's instant loop does."""

    def __init__(
        self,
        weights: MicroLoraWeights,
        lr: float,
        flush_threshold: int = DEFAULT_FLUSH_THRESHOLD,
    ) -> None:
        if flush_threshold < 1:
            raise ValueError(f"flush_threshold must be >= 1, got {flush_threshold}")
        self._weights = weights
        self.lr = float(lr)
        self.flush_threshold = int(flush_threshold)
        self.accumulator = MicroAccumulator.empty(weights.rank, weights.dim)

    @property
    def weights(self) -> MicroLoraWeights:
        """The current adapter (what `apply` should use)."""
        return self._weights

    @property
    def pending(self) -> int:
        """Signals accumulated since the last applied update."""
        return self.accumulator.count

    def observe(
        self,
        query: np.ndarray,
        step_activations: np.ndarray,
        step_rewards: np.ndarray,
        quality: float,
    ) -> bool:
        """Learn from one finished trajectory; True if this applied an update."""
        gradient = learning_signal(query, step_activations, step_rewards)
        self.accumulator.add(gradient, quality)
        if self.accumulator.count >= self.flush_threshold:
            return self.flush()
        return False

    def flush(self) -> bool:
        """Apply whatever is pending; True if there was anything."""
        grad_up, count = self.accumulator.take()
        if count == 0:
            return False
        self._weights = apply_update(self._weights, grad_up, count, self.lr)
        return True


@dataclass(frozen=True, eq=False)
class MicroProjector:
    """`apply` for serving: two BLAS products instead of the reference's
    sequential sums, 4-5x faster per call and within float32 rounding (about
    1e-7) of `apply`. Built once per weights version."""

    down: np.ndarray  # (rank, dim)
    lifted: np.ndarray  # (dim, rank): (up * scale).T

    @classmethod
    def of(cls, weights: MicroLoraWeights) -> MicroProjector:
        lifted = np.ascontiguousarray((weights.up * weights.scale).T, dtype=np.float32)
        return cls(down=weights.down, lifted=lifted)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 1:
            return x + self.lifted @ (self.down @ x)
        return x + (x @ self.down.T) @ self.lifted.T


def accumulate(gradients: np.ndarray, qualities: np.ndarray, rank: int) -> tuple[np.ndarray, int]:
    """What a fresh `MicroAccumulator` holds after `add`-ing each (gradient,
    quality) in order, computed at once: the float32 running sum in index order
    (`cumsum` never reorders), so the result is bit for bit the same."""
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
