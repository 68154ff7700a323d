"""Which model route does well near a query: per-pattern route statistics and
the estimate a router ranks routes by (docs/learning.md, "Route
recommendation"). Pure numpy; the store persists the statistics and serves
the model from memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The estimator's constants (documented in docs/learning.md).
NEIGHBOURS = 5  # nearest patterns whose statistics are combined
TEMPERATURE = 0.05  # similarity weight exp((s - s_best) / T): 0.1 less weighs ~0.14
PRIOR_STRENGTH = 4.0  # pseudo-trajectories of the route's global mean behind every estimate
Z = 1.96  # the band is the estimate +- Z standard errors (~95%), clipped to [0, 1]
# With no quality observed at all: the middle of [0, 1] and a uniform's variance.
UNINFORMED_MEAN = 0.5
UNINFORMED_VARIANCE = 1.0 / 12.0
EXPLORE_MODES = ("ucb", "thompson")


@dataclass(frozen=True)
class RouteStatistic:
    """One pattern's member trajectories of one route (None: no route)."""

    pattern: int  # index into the cycle's extracted patterns
    route: str | None
    count: int
    mean_quality: float
    sum_squared_deviations: float  # variance = this / (count - 1)


def route_statistics(
    members: Sequence[np.ndarray], routes: Sequence[str | None], qualities: np.ndarray
) -> list[RouteStatistic]:
    """Count, mean quality and sum of squared deviations per (pattern, route):
    `members[j]` are pattern j's positions in the window; `routes` and
    `qualities` are the window's, by position. Rows come pattern by pattern,
    routes in name order with no-route first. Float64, two passes (the
    deviations are taken from the mean, not from sums of squares)."""
    codes_of: dict[str | None, int] = {}
    codes = np.fromiter((codes_of.setdefault(r, len(codes_of)) for r in routes), np.int64)
    pattern_of = np.full(len(codes), -1, dtype=np.int64)
    for j, positions in enumerate(members):
        pattern_of[positions] = j
    kept = np.flatnonzero(pattern_of >= 0)
    if not len(kept):
        return []
    width = len(codes_of)
    key = pattern_of[kept] * width + codes[kept]
    q = np.asarray(qualities, dtype=np.float64)[kept]
    size = len(members) * width
    counts = np.bincount(key, minlength=size)
    sums = np.bincount(key, weights=q, minlength=size)
    means = np.divide(sums, counts, out=np.zeros(size), where=counts > 0)
    squared = np.bincount(key, weights=(q - means[key]) ** 2, minlength=size)
    names = sorted(codes_of, key=lambda r: (r is not None, r or ""))
    out = []
    for j in range(len(members)):
        for name in names:
            cell = j * width + codes_of[name]
            if counts[cell]:
                out.append(
                    RouteStatistic(
                        j, name, int(counts[cell]), float(means[cell]), float(squared[cell])
                    )
                )
    return out


@dataclass(frozen=True)
class RouteRecommendation:
    """A route's expected quality near a query, best first in a list."""

    route: str
    expected_quality: float
    support: float  # similarity-weighted trajectories behind the estimate
    low: float
    high: float

    def to_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


class RouteModel:
    """The current patterns' route statistics as matrices (patterns x routes),
    built once per head. `unit`: the patterns' unit centroids (the
    PatternIndex's); `counts`, `means`, `m2`: (patterns, routes) with zero
    where a pattern has no trajectory of a route. No-route rows are left out:
    no router can choose "none"."""

    def __init__(
        self,
        unit: np.ndarray,
        routes: list[str],
        counts: np.ndarray,
        means: np.ndarray,
        m2: np.ndarray,
    ):
        self.unit = unit
        self.routes = routes
        self.column = {r: i for i, r in enumerate(routes)}
        counts = counts.astype(np.float64)
        self.counts = counts
        self.sums = counts * means
        # Per pattern, sum of q^2 over members, less nothing: m2 + n mean^2.
        self.squares = m2 + counts * means * means
        total = counts.sum(axis=0)
        sums = self.sums.sum(axis=0)
        squares = self.squares.sum(axis=0)
        n_all = float(total.sum())
        if n_all > 0:
            overall = float(sums.sum()) / n_all
            overall_var = max(float(squares.sum()) / n_all - overall * overall, 0.0)
        else:
            overall, overall_var = UNINFORMED_MEAN, UNINFORMED_VARIANCE
        self.overall_mean, self.overall_variance = overall, overall_var
        seen = total > 0
        route_mean = np.divide(sums, total, out=np.full(len(routes), overall), where=seen)
        route_var = np.divide(squares, total, out=np.zeros(len(routes)), where=seen)
        route_var = np.maximum(route_var - route_mean * route_mean, 0.0)
        k = PRIOR_STRENGTH
        # Each route's prior: its global mean, itself shrunk toward the overall one.
        self.prior_mean = (total * route_mean + k * overall) / (total + k)
        self.prior_variance = (total * route_var + k * overall_var) / (total + k)
        self.route_totals = total

    @classmethod
    def empty(cls, dim: int = 0) -> RouteModel:
        zeros = np.zeros((0, 0))
        return cls(np.zeros((0, dim), dtype=np.float32), [], zeros, zeros, zeros)

    def estimate(
        self, query: np.ndarray, candidates: Sequence[str] | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(routes, expected quality, support, standard error), unsorted.
        `candidates` None: every route of the statistics."""
        mean, var, support = self._local(query)
        if candidates is None:
            names = self.routes
        else:
            names = list(candidates)
            columns = [self.column.get(r, -1) for r in names]
            if any(c < 0 for c in columns):  # a route no statistic has: the prior
                mean = np.append(mean, self.overall_mean)
                var = np.append(var, self.overall_variance or UNINFORMED_VARIANCE)
                support = np.append(support, 0.0)
            index = np.asarray(columns, dtype=np.int64)  # -1 picks the appended prior
            mean, var, support = mean[index], var[index], support[index]
        se = np.sqrt(var / (support + PRIOR_STRENGTH))
        return names, mean, support, se

    def _local(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per route: the shrunk mean, blended variance and weighted count near
        `query` (the prior alone when there are no patterns or routes)."""
        k = PRIOR_STRENGTH
        if not len(self.routes) or not len(self.unit):
            zeros = np.zeros(len(self.routes))
            return self.prior_mean, self.prior_variance, zeros
        norm = float(np.sqrt(np.dot(query, query)))
        scores = self.unit @ (query / norm) if norm >= 1e-8 else np.zeros(len(self.unit))
        if len(scores) > NEIGHBOURS:
            top = np.argpartition(-scores, NEIGHBOURS - 1)[:NEIGHBOURS]
        else:
            top = np.arange(len(scores))
        near = scores[top].astype(np.float64)
        weights = np.exp((near - near.max()) / TEMPERATURE)
        n = weights @ self.counts[top]
        sums = weights @ self.sums[top]
        squares = weights @ self.squares[top]
        local = np.divide(sums, n, out=np.zeros_like(n), where=n > 0)
        local_var = np.divide(squares, n, out=np.zeros_like(n), where=n > 0) - local * local
        mean = (n * local + k * self.prior_mean) / (n + k)
        var = (n * np.maximum(local_var, 0.0) + k * self.prior_variance) / (n + k)
        return mean, var, n

    def recommend(
        self,
        query: np.ndarray,
        k: int,
        candidates: Sequence[str] | None = None,
        explore: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[RouteRecommendation]:
        """The k best routes for `query`. explore None ranks by the estimate
        (deterministic); "ucb" by the band's upper end; "thompson" by a draw
        from each route's normal posterior (estimate, standard error)."""
        names, mean, support, se = self.estimate(query, candidates)
        if not names or k <= 0:
            return []
        low = np.clip(mean - Z * se, 0.0, 1.0)
        high = np.clip(mean + Z * se, 0.0, 1.0)
        if explore is None:
            rank_by = mean
        elif explore == "ucb":
            rank_by = high
        else:
            rng = rng if rng is not None else np.random.default_rng()
            rank_by = rng.normal(mean, se)
        order = np.lexsort((np.arange(len(names)), -rank_by))[:k]
        return [
            RouteRecommendation(
                names[i], float(mean[i]), float(support[i]), float(low[i]), float(high[i])
            )
            for i in order
        ]
