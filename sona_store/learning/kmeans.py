"""Deterministic k-means++ seeding and Lloyd iterations, as the reference runs
them (docs/reference.md#seeding-and-lloyd-iterations), vectorised over points
and dimensions.

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

# Points per block of distance work: a (BLOCK, k) float32 distance matrix and
# the block's points stay in cache, where one matrix for all n points (40 MB
# at 100k x 100) would be written and re-read from memory by every step.
BLOCK = 4096

# The largest float32 below 2 * SLACK: a float32 distance d is <= it exactly
# when float64(d) < 2 * SLACK (the test seeding made after converting to
# float64), with no float64 temporary and whatever numpy's casting rules.
_CLOSE32 = np.float32(2 * SLACK)
if float(_CLOSE32) >= 2 * SLACK:
    _CLOSE32 = np.nextafter(_CLOSE32, np.float32(0))


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


def _squared_expansion(
    points: np.ndarray, norms: np.ndarray, centres: np.ndarray, centre_norms: np.ndarray
) -> np.ndarray:
    dist = points @ centres.T
    dist *= -2.0
    dist += norms[:, None]
    dist += centre_norms[None, :]
    result: np.ndarray = dist
    return result


def nearest_two(
    points: np.ndarray,
    norms: np.ndarray,
    centres: np.ndarray,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (each of `rows` when given): nearest centre (lowest index
    on ties), and lower/upper safe bounds of its best and second-best squared
    distances.

    Works through BLOCK points at a time, so the (points, centres) distance
    matrix and its temporaries stay in cache; `rows` are gathered a block at a
    time too, never as one copy of the selected points."""
    n = len(points) if rows is None else len(rows)
    best = np.empty(n, dtype=np.int64)
    best_d = np.empty(n, dtype=np.float32)
    second_d = np.empty(n, dtype=np.float32)
    centre_norms = np.einsum("ij,ij->i", centres, centres)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        if rows is None:
            block, block_norms = points[start:stop], norms[start:stop]
        else:
            picked = rows[start:stop]
            block, block_norms = points[picked], norms[picked]
        _nearest_two_block(
            block,
            block_norms,
            centres,
            centre_norms,
            best[start:stop],
            best_d[start:stop],
            second_d[start:stop],
        )
    if centres.shape[0] == 1:
        return best, best_d + SLACK, np.full(n, np.inf)
    return best, best_d + SLACK, np.maximum(second_d - SLACK, 0.0)


def _nearest_two_block(
    points: np.ndarray,
    norms: np.ndarray,
    centres: np.ndarray,
    centre_norms: np.ndarray,
    best: np.ndarray,
    best_d: np.ndarray,
    second_d: np.ndarray,
) -> None:
    """nearest_two for one block of points, written into the output views."""
    dist = _squared_expansion(points, norms, centres, centre_norms)
    rows = np.arange(len(points))
    best[:] = np.argmin(dist, axis=1)
    best_d[:] = dist[rows, best]
    if centres.shape[0] == 1:
        return
    dist[rows, best] = np.inf
    second_d[:] = dist.min(axis=1)
    unsure = np.flatnonzero(second_d - best_d < 2 * SLACK)
    if len(unsure):
        exact = _exact_squared(points[unsure], centres)
        best[unsure] = np.argmin(exact, axis=1)
        best_d[unsure] = exact[np.arange(len(unsure)), best[unsure]]
        exact[np.arange(len(unsure)), best[unsure]] = np.inf
        second_d[unsure] = exact.min(axis=1)


def seed_centres(points: np.ndarray, k: int, norms: np.ndarray | None = None) -> np.ndarray:
    """Indices of k seed points: point 0 first, then repeatedly the point farthest
    (squared distance) from its nearest chosen seed, the first such on ties.
    `norms`: the points' squared norms, when the caller has them already."""
    if norms is None:
        norms = np.einsum("ij,ij->i", points, points)
    chosen = [0]
    nearest = np.full(len(points), np.inf)
    _lower_to(nearest, points, norms, 0)
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
        _lower_to(nearest, points, norms, nxt)
    return np.asarray(chosen, dtype=np.int64)


def _lower_to(nearest: np.ndarray, points: np.ndarray, norms: np.ndarray, index: int) -> None:
    """Lower each point's squared distance to its nearest seed (float64) to its
    distance to point `index`: |x|^2 - 2 x.c + |c|^2 in float32, exact where
    it is near 0. In place, without float64 temporaries: one pass over the
    points is the whole cost of a seeding step."""
    dist = points @ points[index]
    dist *= -2.0
    dist += norms
    dist += norms[index]
    close = np.flatnonzero(dist <= _CLOSE32)  # duplicates must measure exactly 0
    before = nearest[close]
    np.minimum(nearest, dist, out=nearest)
    if len(close):
        exact = _exact_squared(points[close], points[index][None, :])[:, 0]
        nearest[close] = np.minimum(before, exact)


def cluster_means(
    points: np.ndarray, assignments: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each cluster's members (zero vector for an empty cluster, float32)
    and sizes. Sums in float64 whatever the points' type, over each cluster's
    members gathered BLOCK rows at a time: O(n d) additions and no float64 copy
    of all the points (a product with a (k, n) membership matrix does k times
    the work, and at 100k points both were hundreds of MB)."""
    sizes = np.bincount(assignments, minlength=k)
    order = np.argsort(assignments, kind="stable")
    ends = np.cumsum(sizes)
    sums = np.zeros((k, points.shape[1]), dtype=np.float64)
    for c in np.flatnonzero(sizes):
        members = order[ends[c] - sizes[c] : ends[c]]
        for start in range(0, len(members), BLOCK):
            block = points[members[start : start + BLOCK]].astype(np.float64)
            sums[c] += block.sum(axis=0)
    nonempty = sizes > 0
    sums[nonempty] /= sizes[nonempty, None]
    return sums.astype(np.float32), sizes


class _ClusterSums:
    """Per-cluster float64 sums and sizes, updated for the points that changed
    cluster (a full product only when many did). Computed when first needed:
    the first move usually changes most points, and then the sums of the
    initial assignments would be thrown away unread."""

    def __init__(self, points: np.ndarray, assignments: np.ndarray, k: int):
        self.points = points
        self.k = k
        self._initial: np.ndarray | None = assignments

    def _recompute(self, assignments: np.ndarray) -> None:
        membership = np.zeros((self.k, len(assignments)), dtype=np.float32)
        membership[assignments, np.arange(len(assignments))] = 1.0
        self.sums = (membership @ self.points).astype(np.float64)
        self.sizes = np.bincount(assignments, minlength=self.k)
        self._initial = None

    def move(self, old: np.ndarray, new: np.ndarray) -> None:
        changed = np.flatnonzero(old != new)
        if len(changed) * 8 > len(old):
            self._recompute(new)
            return
        if self._initial is not None:
            self._recompute(self._initial)
        moved = self.points[changed].astype(np.float64)
        np.subtract.at(self.sums, old[changed], moved)
        np.add.at(self.sums, new[changed], moved)
        self.sizes += np.bincount(new[changed], minlength=self.k)
        self.sizes -= np.bincount(old[changed], minlength=self.k)

    def means(self) -> np.ndarray:
        if self._initial is not None:
            self._recompute(self._initial)
        out = np.zeros_like(self.sums)
        nonempty = self.sizes > 0
        out[nonempty] = self.sums[nonempty] / self.sizes[nonempty, None]
        result: np.ndarray = out.astype(np.float32)
        return result


def lloyd(points: np.ndarray, k: int, max_iterations: int, convergence: float) -> KMeansResult:
    """Seeded Lloyd's algorithm with the reference's stopping rules: stop when no
    assignment changes, or when the largest centre shift is under `convergence`."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    norms = np.einsum("ij,ij->i", points, points)
    centres = points[seed_centres(points, k, norms)].copy()
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
            rows = None if len(need) == len(points) else need
            best, best_sq, second_sq = nearest_two(points, norms, centres, rows)
            new_assignments[need] = best
            # Far from the origin, float32 cancellation can leave a squared
            # distance below zero: clamp, or its NaN bound is never crossed again.
            upper[need] = np.sqrt(np.maximum(best_sq, 0.0))
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
