"""Loop A as the reference runs it in memory (docs/reference.md, "Loop A:
instant learning"): accumulate each finished trajectory's signal one at a
time, apply every `flush_threshold` signals, forward with sequential sums.

sona_store computes the same thing in batches (`accumulate_groups`,
`apply_groups`) and serves the adapter through `MicroProjector`; these
one-at-a-time versions are what the tests hold those paths to, bit for bit
where the order of float32 additions is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sona_store.config import MICRO_FLUSH_THRESHOLD
from sona_store.learning.micro_lora import MicroLoraWeights, apply_update
from sona_store.learning.signal import learning_signal


def sequential_sum(values: np.ndarray, axis: int) -> np.ndarray:
    """Float32 sum in index order along `axis`, as the reference's loops add
    (`cumsum` never reorders, unlike `sum`'s pairwise summation)."""
    total: np.ndarray = np.cumsum(values, axis=axis, dtype=np.float32).take(-1, axis=axis)
    return total


def apply(weights: MicroLoraWeights, x: np.ndarray) -> np.ndarray:
    """`x + scale * sum_r (x . down_r) * up_r` for one vector (dim,) or a
    batch (n, dim), with the reference's sequential sums; a new float32 array
    of the same shape."""
    xs = np.asarray(x, dtype=np.float32)
    if xs.ndim not in (1, 2) or xs.shape[-1] != weights.dim:
        raise ValueError(f"input must be ({weights.dim},) or (n, {weights.dim}); got {xs.shape}")
    batch = np.atleast_2d(xs)
    # (n, rank): each row's projection on each down row, summed left to right.
    projected = sequential_sum(batch[:, None, :] * weights.down[None, :, :], axis=2)
    # (n, dim): sum over rank rows in order, then scaled, then added to x.
    lifted = sequential_sum(projected[:, :, None] * weights.up[None, :, :], axis=1)
    out: np.ndarray = (batch + lifted * weights.scale).reshape(xs.shape)
    return out


@dataclass
class MicroAccumulator:
    """The reference's pending gradient for `up`, added to one signal at a
    time. Float32 like the reference's accumulator (parity needs the same
    rounding)."""

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

        Refuses a gradient of the wrong length or with NaN/inf values, and a
        sum that overflows float32 (the reference ignores the first and lets
        the others poison `up`: docs/reference.md, "Known defects", 5).
        """
        g = np.asarray(gradient, dtype=np.float32)
        q = np.float32(quality)
        if g.shape != (self._dim,):
            raise ValueError(f"gradient must have shape ({self._dim},), got {g.shape}")
        if not (np.isfinite(q) and np.isfinite(g).all()):
            raise ValueError("gradient and quality must be finite")
        with np.errstate(over="ignore", invalid="ignore"):
            grad_up = self.grad_up + (g * q)[None, :]
        if not np.isfinite(grad_up).all():
            raise ValueError("the accumulated micro-LoRA gradient overflows float32")
        self.grad_up = grad_up
        self.count += 1

    def take(self) -> tuple[np.ndarray, int]:
        """Hand over (grad_up, count) and start again from zero."""
        taken = (self.grad_up, self.count)
        self.grad_up = np.zeros_like(taken[0])
        self.count = 0
        return taken


class InstantLoop:
    """Loop A in memory: signal -> accumulate -> apply every `flush_threshold`
    signals (or on `flush`), as the reference's instant loop does."""

    def __init__(
        self,
        weights: MicroLoraWeights,
        lr: float,
        flush_threshold: int = MICRO_FLUSH_THRESHOLD,
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
