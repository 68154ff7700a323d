"""Loop A's learning signal: the REINFORCE gradient one finished trajectory
teaches the micro-LoRA (docs/reference.md#learning-signal).

Follows the published npm build (0.1.8), checked against its binary:

- no steps: the gradient is the query embedding itself, *not* normalised;
- one step: ``reward * activations`` (no baseline; the crate's source would
  subtract the step's own reward and so learn nothing from it);
- two or more: ``sum((reward - mean reward) * activations)``.

Activations contribute their first ``len(query)`` values (zero-padded when
shorter). Step gradients are L2-normalised when the norm exceeds 1e-8.

Arithmetic is float32 in the reference's order (sequential sums), so results
are bit-for-bit what the reference computes, not merely close.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from sona_store.learning.embedding import NORM_EPSILON, fit_width


def _sequential_sum(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Float32 sum in index order: `cumsum` never reorders, unlike `sum`'s
    pairwise summation, which matches the reference's left-to-right loops."""
    # `take` along an axis gives an array (numpy's stubs say a scalar).
    return cast(np.ndarray, np.cumsum(values, axis=axis, dtype=np.float32).take(-1, axis=axis))


ROW_BLOCK = 512  # rows transposed at a time: the copy stays in cache
MIN_REDUCE_ROWS = 8  # fewer rows are summed with cumsum


def _row_sequential_sums(matrix: np.ndarray) -> np.ndarray:
    """Float32 sum of each row in index order, for many rows at once. A
    reduction over the outer axis of a C-ordered array adds its rows in order,
    vectorised across the inner axis (numpy sums pairwise only along the
    contiguous axis), so each block of rows is transposed and reduced over
    axis 0. Numpy may pair the sums when the inner axis is very short, so
    a few rows take the cumsum (tests/test_learning_fast_paths.py checks
    both against `_sequential_sum`)."""
    n = matrix.shape[0]
    if n < MIN_REDUCE_ROWS:
        return _sequential_sum(matrix, axis=1)
    out = np.empty(n, dtype=np.float32)
    blocks = -(-n // ROW_BLOCK)
    bounds = [n * b // blocks for b in range(blocks + 1)]  # every block >= 8 rows
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        block = np.ascontiguousarray(matrix[lo:hi].T, dtype=np.float32)
        np.add.reduce(block, axis=0, out=out[lo:hi])
    return out


def learning_signal(
    query: np.ndarray,
    step_activations: np.ndarray,
    step_rewards: np.ndarray,
) -> np.ndarray:
    """Gradient estimate of one trajectory: float32, `len(query)` entries.

    query: (d,). step_activations: (m, h), any h. step_rewards: (m,).
    Inputs are not modified.
    """
    q = np.asarray(query, dtype=np.float32)
    rewards = np.asarray(step_rewards, dtype=np.float32).reshape(-1)
    m = rewards.shape[0]
    if m == 0:
        # The reference returns the query unchanged, skipping normalisation.
        unchanged: np.ndarray = q.copy()
        return unchanged

    acts = np.asarray(step_activations, dtype=np.float32).reshape(m, -1)
    acts = fit_width(acts, q.shape[0])
    advantages: np.ndarray
    if m == 1:
        advantages = rewards
    else:
        baseline = _sequential_sum(rewards) / np.float32(m)
        advantages = rewards - baseline
    gradient: np.ndarray = _sequential_sum(advantages[:, None] * acts, axis=0)

    norm = np.sqrt(_sequential_sum(gradient * gradient))
    if norm > NORM_EPSILON:
        gradient = gradient / norm
    return gradient.astype(np.float32, copy=False)


def _one_step_signals(activations: np.ndarray, rewards: np.ndarray, dim: int) -> np.ndarray:
    """`learning_signal` of one-step trajectories, row by row: reward * activations,
    L2-normalised (the norm a sequential float32 sum, as the reference adds)."""
    with np.errstate(over="ignore", invalid="ignore"):
        grads = rewards[:, None] * fit_width(np.asarray(activations, np.float32), dim)
        norms = np.sqrt(_row_sequential_sums(grads * grads))
        # Rows at or below the epsilon are divided by 1, which leaves them as
        # they are (a masked divide costs twice as much).
        divisors = np.where(norms > NORM_EPSILON, norms, np.float32(1.0))
        np.divide(grads, divisors[:, None], out=grads)
    signals: np.ndarray = grads
    return signals


def batch_learning_signals(
    queries: np.ndarray,
    step_owner: np.ndarray,
    step_activations: np.ndarray,
    step_rewards: np.ndarray,
) -> np.ndarray:
    """`learning_signal` of n trajectories, (n, d) float32. Steps are sorted by
    owner. Trajectories with none or one step (the common case) are computed
    at once, bit for bit as one by one; longer ones one by one."""
    n = len(queries)
    counts = np.bincount(step_owner, minlength=n)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    rewards = np.asarray(step_rewards, dtype=np.float32)
    single = np.flatnonzero(counts == 1)
    if len(single) == n:  # the common case: one step each, no query rows kept
        return _one_step_signals(step_activations, rewards, queries.shape[1])
    gradients = np.array(queries, dtype=np.float32, copy=True)
    if len(single):
        rows = bounds[single]
        gradients[single] = _one_step_signals(
            np.asarray(step_activations, np.float32)[rows], rewards[rows], queries.shape[1]
        )
    for i in np.flatnonzero(counts > 1):
        lo, hi = bounds[i], bounds[i + 1]
        with np.errstate(over="ignore", invalid="ignore"):
            gradients[i] = learning_signal(queries[i], step_activations[lo:hi], rewards[lo:hi])
    return gradients
