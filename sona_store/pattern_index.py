"""The current patterns as one normalised matrix, for cosine search in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sona_store.store import Pattern

NORM_EPSILON = 1e-8


class PatternIndex:
    """Immutable: built once per head, shared by every thread."""

    def __init__(self, patterns: list[Pattern]):
        self.patterns = patterns
        if patterns:
            matrix = np.stack([p.centroid for p in patterns]).astype(np.float32)
            norms = np.linalg.norm(matrix, axis=1)
            usable = norms >= NORM_EPSILON  # similarity 0 for a near-zero centroid
            matrix[usable] /= norms[usable, None]
            matrix[~usable] = 0.0
        else:
            matrix = np.zeros((0, 0), dtype=np.float32)
        self.unit = matrix

    def search(self, query: np.ndarray, k: int) -> list[Pattern]:
        if not self.patterns or k <= 0:
            return []
        norm = float(np.linalg.norm(query))
        if norm < NORM_EPSILON:
            scores = np.zeros(len(self.patterns), dtype=np.float32)
        else:
            scores = self.unit @ (query / norm)
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.lexsort((top, -scores[top]))]  # best first, lowest id on ties
        else:
            top = np.lexsort((np.arange(len(scores)), -scores))
        return [self.patterns[i] for i in top]
