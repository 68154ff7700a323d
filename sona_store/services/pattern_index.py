"""Learned patterns as the API returns them, and the current ones as one
normalised matrix for cosine search in memory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from sona_store.db.models import Pattern as PatternRow
from sona_store.learning.embedding import NORM_EPSILON, cosine


@dataclass(frozen=True)
class Pattern:
    """A learned pattern as read back from the store."""

    id: int
    cycle_id: int
    centroid: np.ndarray
    cluster_size: int
    total_weight: float
    avg_quality: float
    pattern_type: str
    access_count: int
    last_accessed: dt.datetime | None
    created_at: dt.datetime

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        # The centroid is hundreds of floats: its shape says enough here.
        return (
            f"id={self.id}, cycle_id={self.cycle_id}, "
            f"centroid=<{self.centroid.shape[0]} floats>, cluster_size={self.cluster_size}, "
            f"avg_quality={self.avg_quality:.4g}, total_weight={self.total_weight:.4g}, "
            f"access_count={self.access_count}"
        )

    @classmethod
    def from_row(cls, row: PatternRow) -> Pattern:
        return cls(
            id=row.id,
            cycle_id=row.cycle_id,
            centroid=row.centroid,
            cluster_size=row.cluster_size,
            total_weight=row.total_weight,
            avg_quality=row.avg_quality,
            pattern_type=row.pattern_type,
            access_count=row.access_count,
            last_accessed=row.last_accessed,
            created_at=row.created_at,
        )

    def similarity(self, query: np.ndarray) -> float:
        """Cosine similarity; 0 when lengths differ or a norm is under 1e-8."""
        return cosine(np.asarray(query), self.centroid)

    def to_dict(self, *, with_centroid: bool = True) -> dict[str, Any]:
        out = {
            "id": self.id,
            "cycle_id": self.cycle_id,
            "cluster_size": self.cluster_size,
            "total_weight": self.total_weight,
            "avg_quality": self.avg_quality,
            "pattern_type": self.pattern_type,
            "access_count": self.access_count,
            "last_accessed": self.last_accessed.isoformat() if self.last_accessed else None,
            "created_at": self.created_at.isoformat(),
        }
        if with_centroid:
            out["centroid"] = [float(v) for v in self.centroid]
        return out


@dataclass(frozen=True, repr=False)  # Pattern's repr, without the centroid's floats
class ScoredPattern(Pattern):
    """A `find_patterns` result: the pattern and its cosine similarity to the
    query (computed in float32 by the index's matrix product)."""

    score: float

    @classmethod
    def of(cls, pattern: Pattern, score: float) -> ScoredPattern:
        # Copies the fields without re-running the dataclass __init__: it is
        # called once a result on the search path, where __init__'s checks
        # would cost several times the copy.
        scored = object.__new__(cls)
        scored.__dict__.update(pattern.__dict__)
        scored.__dict__["score"] = score
        return scored

    def _describe(self) -> str:
        return f"{super()._describe()}, score={self.score:.4g}"

    def to_dict(self, *, with_centroid: bool = True) -> dict[str, Any]:
        return {**super().to_dict(with_centroid=with_centroid), "score": self.score}


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

    def search(self, query: np.ndarray, k: int) -> list[ScoredPattern]:
        if not self.patterns or k <= 0:
            return []
        norm = float(np.linalg.norm(query))
        if norm < NORM_EPSILON:
            scores: np.ndarray = np.zeros(len(self.patterns), dtype=np.float32)
        else:
            scores = self.unit @ (query / norm)
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.lexsort((top, -scores[top]))]  # best first, lowest id on ties
        else:
            top = np.lexsort((np.arange(len(scores)), -scores))
        # Python ints and floats in one conversion each: faster than indexing
        # with numpy integers and converting scores one by one.
        patterns, of = self.patterns, ScoredPattern.of
        return [
            of(patterns[i], score)
            for i, score in zip(top.tolist(), scores[top].tolist(), strict=True)
        ]
