"""Deterministic k-means++ seeding and Lloyd iterations, as the reference runs
them (SEED.md, "Pattern extraction"), vectorised over points and dimensions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KMeansResult:
    centres: np.ndarray  # (k, d) float32, as the last Lloyd round left them
    assignments: np.ndarray  # (n,) int64
    iterations: int


def _squared_distances(
    points: np.ndarray, centres: np.ndarray, point_norms: np.ndarray
) -> np.ndarray:
    """(n, k) squared Euclidean distances, expanded as |x|^2 - 2 x.c + |c|^2 in
    float64 so near-ties resolve as the reference's direct float32 sums do."""
    centres64 = centres.astype(np.float64)
    centre_norms = np.einsum("ij,ij->i", centres64, centres64)
    dist = point_norms[:, None] - 2.0 * (points @ centres64.T) + centre_norms[None, :]
    np.maximum(dist, 0.0, out=dist)
    return dist


def seed_centres(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of k seed points: point 0 first, then repeatedly the point farthest
    (squared distance) from its nearest chosen seed, the first such on ties."""
    points64 = points.astype(np.float64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = 0
    diff = points64 - points64[0]
    nearest = np.einsum("ij,ij->i", diff, diff)
    for i in range(1, k):
        nxt = int(np.argmax(nearest))
        chosen[i] = nxt
        diff = points64 - points64[nxt]
        np.minimum(nearest, np.einsum("ij,ij->i", diff, diff), out=nearest)
    return chosen


def cluster_means(
    points: np.ndarray, assignments: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each cluster's members (zero vector for an empty cluster) and sizes."""
    sizes = np.bincount(assignments, minlength=k)
    sums = np.zeros((k, points.shape[1]), dtype=np.float64)
    np.add.at(sums, assignments, points)
    nonempty = sizes > 0
    sums[nonempty] /= sizes[nonempty, None]
    return sums.astype(np.float32), sizes


def lloyd(points: np.ndarray, k: int, max_iterations: int, convergence: float) -> KMeansResult:
    """Seeded Lloyd's algorithm with the reference's stopping rules: stop when no
    assignment changes, or when the largest centre shift is under `convergence`."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    points64 = points.astype(np.float64)
    point_norms = np.einsum("ij,ij->i", points64, points64)
    centres = points[seed_centres(points, k)].copy()
    assignments = np.zeros(len(points), dtype=np.int64)
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        new_assignments = np.argmin(_squared_distances(points64, centres, point_norms), axis=1)
        if np.array_equal(new_assignments, assignments):
            break
        assignments = new_assignments
        new_centres, _ = cluster_means(points64, assignments, k)
        shift = np.sqrt(((new_centres.astype(np.float64) - centres) ** 2).sum(axis=1)).max()
        centres = new_centres
        if shift < convergence:
            break
    return KMeansResult(centres=centres, assignments=assignments, iterations=iterations)
