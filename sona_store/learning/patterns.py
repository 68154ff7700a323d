"""Learned patterns from clustered trajectory embeddings
(docs/reference.md#patterns-search-and-pruning), which the background cycle
learns from (sona_store.learning.background)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sona_store.learning.kmeans import cluster_means, lloyd


@dataclass(frozen=True)
class ExtractedPattern:
    centroid: np.ndarray  # (d,) float32
    cluster_size: int
    total_weight: float  # sum of member qualities
    avg_quality: float
    # Positions (in the clustered window) of the member trajectories: what the
    # route statistics aggregate. Not part of the pattern's identity.
    members: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64), compare=False, repr=False
    )


def extract_patterns(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    k_clusters: int,
    *,
    max_iterations: int = 100,
    convergence: float = 0.001,
    min_cluster_size: int = 1,
    quality_threshold: float = 0.05,
) -> list[ExtractedPattern]:
    """Cluster n embeddings into min(k_clusters, n) groups and keep each group
    with at least `min_cluster_size` members whose mean quality reaches
    `quality_threshold`.

    Differs from the reference on purpose (its defect 7): a pattern's centroid
    is always the mean of its members. The reference keeps the seed point when
    the first assignment pass changes nothing (always so for k = 1).
    """
    n = len(embeddings)
    if n == 0:
        return []
    k = min(k_clusters, n)
    result = lloyd(embeddings, k, max_iterations, convergence)
    centroids, sizes = cluster_means(embeddings, result.assignments, k)  # float64 sums
    total = np.bincount(result.assignments, weights=qualities.astype(np.float64), minlength=k)
    patterns = []
    order = np.argsort(result.assignments, kind="stable")
    ends = np.cumsum(sizes)
    for c in range(k):
        size = int(sizes[c])
        if size < min_cluster_size or size == 0:
            continue
        avg = total[c] / size
        if avg < quality_threshold:
            continue
        patterns.append(
            ExtractedPattern(
                centroid=centroids[c],
                cluster_size=size,
                total_weight=float(np.float32(total[c])),
                avg_quality=float(np.float32(avg)),
                members=order[ends[c] - size : ends[c]],
            )
        )
    return patterns
