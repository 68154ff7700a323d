"""Trajectory embeddings: the vector a trajectory is clustered by
(docs/reference.md#trajectory-embedding)."""

from __future__ import annotations

import numpy as np

NORM_EPSILON = 1e-8


def l2_normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm where that norm exceeds 1e-8 (in place)."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64))
    scale = np.where(norms > NORM_EPSILON, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
    matrix *= scale.astype(np.float32)[:, None]
    return matrix


def fit_width(matrix: np.ndarray, width: int) -> np.ndarray:
    """Pad with zeros or cut the columns to `width` (activations of hidden_dim
    entries contribute their first embedding_dim values)."""
    if matrix.shape[1] == width:
        return matrix
    if matrix.shape[1] > width:
        return matrix[:, :width]
    out = np.zeros((matrix.shape[0], width), dtype=matrix.dtype)
    out[:, : matrix.shape[1]] = matrix
    return out


def trajectory_embeddings(
    queries: np.ndarray,
    step_owner: np.ndarray,
    step_activations: np.ndarray,
    step_rewards: np.ndarray,
) -> np.ndarray:
    """Embed n trajectories at once.

    queries: (n, d) float32. step_owner: (m,) index of the trajectory each step
    belongs to. step_activations: (m, h); step_rewards: (m,).
    Each embedding is q + sum(max(r, 0) * a), divided by W + 1 when the weight
    sum W > 0, then L2-normalised.
    """
    n, dim = queries.shape
    if not len(step_owner):
        return l2_normalise_rows(np.array(queries, dtype=np.float32, copy=True))
    weights = np.maximum(step_rewards.astype(np.float32), np.float32(0.0))
    weighted = fit_width(np.asarray(step_activations, np.float32), dim) * weights[:, None]
    if len(step_owner) == n and (n < 2 or bool((np.diff(step_owner) > 0).all())):
        # One step each (the common case): the same float32 operations, in
        # place. Dividing by 1 where the weight is 0 leaves a row unchanged.
        weighted += queries
        weighted /= np.where(weights > 0, weights + np.float32(1.0), np.float32(1.0))[:, None]
        return l2_normalise_rows(weighted)
    out = np.array(queries, dtype=np.float32, copy=True)
    np.add.at(out, step_owner, weighted)  # in step order, as the reference adds
    weight_sums = np.bincount(step_owner, weights=weights, minlength=n).astype(np.float32)
    has_weight = weight_sums > 0
    out[has_weight] /= (weight_sums[has_weight] + np.float32(1.0))[:, None]
    return l2_normalise_rows(out)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The reference's pattern similarity: cosine in float64, 0 when the lengths
    differ or a norm is under 1e-8."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if x.shape != y.shape:
        return 0.0
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx < NORM_EPSILON or ny < NORM_EPSILON:
        return 0.0
    return float(x @ y / (nx * ny))
