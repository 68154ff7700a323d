"""Deterministic k-means++ seeding and Lloyd iterations, as the reference runs
them (SEED.md, "Pattern extraction"), vectorised over points and dimensions.

Two things make it fast without changing any decision the reference makes:
- distances come from the expansion |x|^2 - 2 x.c + |c|^2 (one float32 matrix
  product); wherever float32 rounding could decide a comparison (a near-tie,
  duplicate points) the affected rows are re-decided by exact float64 sums;
- Hamerly's bounds: a point whose distance to its own centre is provably below
  its distance to every other centre keeps its assignment without being
  measured again, so later rounds only touch the points near a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Squared-distance slack covering float32 expansion error for vectors of norm
# up to a few units (pattern embeddings are unit vectors).
SLACK = 1e-4


@dataclass(frozen=True)
class KMeansResult:
    centres: np.ndarray  # (k, d) float32, as the last Lloyd round left them
    assignments: np.ndarray  # (n,) int64
    iterations: int


def _exact_squared(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(len(points), len(centres)) squared distances by direct float64 sums."""
    out = np.empty((len(points), len(centres)), dtype=np.float64)
    for start in range(0, len(points), 256):  # bounded temporary memory
        block = points[start : start + 256].astype(np.float64)[:, None, :]
        diff = block - centres.astype(np.float64)[None, :, :]
        out[start : start + 256] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def _squared_expansion(points: np.ndarray, norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    dist = points @ centres.T
    dist *= -2.0
    dist += norms[:, None]
    dist += np.einsum("ij,ij->i", centres, centres)[None, :]
    return dist


def nearest_two(
    points: np.ndarray, norms: np.ndarray, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point: nearest centre (lowest index on ties), and lower/upper
    safe bounds of its best and second-best squared distances."""
    dist = _squared_expansion(points, norms, centres)
    rows = np.arange(len(points))
    best = np.argmin(dist, axis=1)
    best_d = dist[rows, best].copy()
    if centres.shape[0] == 1:
        return best, best_d + SLACK, np.full(len(points), np.inf)
    dist[rows, best] = np.inf
    second_d = dist.min(axis=1)
    unsure = np.flatnonzero(second_d - best_d < 2 * SLACK)
    if len(unsure):
        exact = _exact_squared(points[unsure], centres)
        best[unsure] = np.argmin(exact, axis=1)
        best_d[unsure] = exact[np.arange(len(unsure)), best[unsure]]
        exact[np.arange(len(unsure)), best[unsure]] = np.inf
        second_d[unsure] = exact.min(axis=1)
    return best, best_d + SLACK, np.maximum(second_d - SLACK, 0.0)


def seed_centres(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of k seed points: point 0 first, then repeatedly the point farthest
    (squared distance) from its nearest chosen seed, the first such on ties."""
    norms = np.einsum("ij,ij->i", points, points)
    chosen = [0]
    nearest = _distances_to(points, norms, 0)
    for _ in range(1, k):
        top = nearest.max()
        candidates = np.flatnonzero(nearest >= top - 2 * SLACK)
        if len(candidates) > 1:
            # Decide exactly among the near-maximal points.
            exact = _exact_squared(points[candidates], points[chosen]).min(axis=1)
            nxt = int(candidates[np.argmax(exact)])
        else:
            nxt = int(candidates[0])
        chosen.append(nxt)
        np.minimum(nearest, _distances_to(points, norms, nxt), out=nearest)
    return np.asarray(chosen, dtype=np.int64)


def _distances_to(points: np.ndarray, norms: np.ndarray, index: int) -> np.ndarray:
    centre = points[index]
    dist = (norms - 2.0 * (points @ centre) + norms[index]).astype(np.float64)
    close = np.flatnonzero(dist < 2 * SLACK)  # duplicates must measure exactly 0
    if len(close):
        dist[close] = _exact_squared(points[close], centre[None, :])[:, 0]
    return dist


def cluster_means(
    points: np.ndarray, assignments: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each cluster's members (zero vector for an empty cluster) and sizes.
    The sums are one matrix product with the membership matrix, in the points'
    precision (float32 inside Lloyd rounds, float64 for final centroids)."""
    sizes = np.bincount(assignments, minlength=k)
    membership = np.zeros((k, len(assignments)), dtype=points.dtype)
    membership[assignments, np.arange(len(assignments))] = 1.0
    sums = (membership @ points).astype(np.float64)
    nonempty = sizes > 0
    sums[nonempty] /= sizes[nonempty, None]
    return sums.astype(np.float32), sizes


class _ClusterSums:
    """Per-cluster float64 sums and sizes, updated for the points that changed
    cluster (a full product only when many did)."""

    def __init__(self, points: np.ndarray, assignments: np.ndarray, k: int):
        self.points = points
        self.k = k
        self._recompute(assignments)

    def _recompute(self, assignments: np.ndarray) -> None:
        membership = np.zeros((self.k, len(assignments)), dtype=np.float32)
        membership[assignments, np.arange(len(assignments))] = 1.0
        self.sums = (membership @ self.points).astype(np.float64)
        self.sizes = np.bincount(assignments, minlength=self.k)

    def move(self, old: np.ndarray, new: np.ndarray) -> None:
        changed = np.flatnonzero(old != new)
        if len(changed) * 8 > len(old):
            self._recompute(new)
            return
        moved = self.points[changed].astype(np.float64)
        np.subtract.at(self.sums, old[changed], moved)
        np.add.at(self.sums, new[changed], moved)
        self.sizes += np.bincount(new[changed], minlength=self.k)
        self.sizes -= np.bincount(old[changed], minlength=self.k)

    def means(self) -> np.ndarray:
        out = np.zeros_like(self.sums)
        nonempty = self.sizes > 0
        out[nonempty] = self.sums[nonempty] / self.sizes[nonempty, None]
        return out.astype(np.float32)


def lloyd(points: np.ndarray, k: int, max_iterations: int, convergence: float) -> KMeansResult:
    """Seeded Lloyd's algorithm with the reference's stopping rules: stop when no
    assignment changes, or when the largest centre shift is under `convergence`."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    norms = np.einsum("ij,ij->i", points, points)
    centres = points[seed_centres(points, k)].copy()
    assignments = np.zeros(len(points), dtype=np.int64)
    sums = _ClusterSums(points, assignments, k)
    # Hamerly bounds on (non-squared) distances: upper to the own centre, lower
    # to every other centre; the first round measures every point.
    upper = np.full(len(points), np.inf)
    lower = np.zeros(len(points))
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        new_assignments = assignments.copy()
        need = np.flatnonzero(upper >= lower)
        if len(need):
            best, best_sq, second_sq = nearest_two(points[need], norms[need], centres)
            new_assignments[need] = best
            upper[need] = np.sqrt(best_sq)
            lower[need] = np.sqrt(second_sq)
        if np.array_equal(new_assignments, assignments):
            break
        sums.move(assignments, new_assignments)
        assignments = new_assignments
        new_centres = sums.means()
        moved = np.sqrt(((new_centres.astype(np.float64) - centres) ** 2).sum(axis=1))
        centres = new_centres
        if moved.max() < convergence:
            break
        upper += moved[assignments]
        lower -= moved.max()
    return KMeansResult(centres=centres, assignments=assignments, iterations=iterations)
