"""Which model route does well near a query: per-pattern route statistics and
the estimate a router ranks routes by (docs/learning.md, "Route statistics
and recommendation"). Pure numpy; the store persists the statistics and serves
the model from memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sona_store.learning.embedding import NORM_EPSILON

# The estimator's constants (documented in docs/learning.md).
TEMPERATURE = 0.05  # pattern weight exp((s - s_best) / T): 0.1 less similar weighs ~0.14
PRIOR_STRENGTH = 4.0  # pseudo-trajectories of the route's global mean behind every estimate
Z = 1.96  # the band is the estimate +- Z standard errors (~95%), clipped to [0, 1]
# With no quality observed at all: the middle of [0, 1] and a uniform's variance.
UNINFORMED_MEAN = 0.5
UNINFORMED_VARIANCE = 1.0 / 12.0
EXPLORE_MODES = ("ucb", "thompson")
# Thompson draws when the caller passes no generator (numpy's Generator locks
# around each draw, so threads may share it).
_DEFAULT_RNG = np.random.default_rng()


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


class RouteRecommendation(NamedTuple):
    """A route's expected quality near a query (a list of them is best first).
    A named tuple: built per call on a hot path."""

    route: str
    expected_quality: float
    support: float  # similarity-weighted trajectories behind the estimate
    low: float  # the ~95% band, clipped to [0, 1]
    high: float

    def to_dict(self) -> dict[str, float | str]:
        return self._asdict()


class RouteModel:
    """The current patterns' route statistics, built once per head.

    `unit`: the patterns' unit centroids (the PatternIndex's); `counts`,
    `means`, `m2`: (patterns, routes), zero where a pattern has no trajectory
    of a route. No-route statistics are left out: no router can choose
    "none". Near a query, pattern j weighs w_j = exp((s_j - s_best) / T)
    (s: cosine similarity), so the nearest counts fully; a route's estimate is
    its weighted mean quality shrunk toward its global mean by PRIOR_STRENGTH
    pseudo-trajectories."""

    def __init__(
        self,
        unit: np.ndarray,
        routes: list[str],
        counts: np.ndarray,
        means: np.ndarray,
        m2: np.ndarray,
    ):
        self.unit = np.ascontiguousarray(unit, dtype=np.float32)
        self.routes = routes
        self.column = {r: i for i, r in enumerate(routes)}
        counts = np.asarray(counts, dtype=np.float64)
        sums = counts * means
        squares = m2 + sums * means  # per cell: the sum of q^2
        # One product with the weights gives every route's n, sum and sum of squares.
        self.table = np.hstack([counts, sums, squares]) if len(routes) else np.zeros((0, 0))
        total, route_sums, route_squares = counts.sum(0), sums.sum(0), squares.sum(0)
        n_all = float(total.sum())
        if n_all > 0:
            overall = float(route_sums.sum()) / n_all
            overall_var = max(float(route_squares.sum()) / n_all - overall * overall, 0.0)
        else:
            overall, overall_var = UNINFORMED_MEAN, UNINFORMED_VARIANCE
        # A route no statistic has: the overall mean, with a wide band.
        self.unseen = (overall, overall_var if overall_var > 0 else UNINFORMED_VARIANCE)
        seen = total > 0
        route_mean = np.divide(route_sums, total, out=np.full(len(routes), overall), where=seen)
        route_var = np.divide(route_squares, total, out=np.zeros(len(routes)), where=seen)
        route_var = np.maximum(route_var - route_mean * route_mean, 0.0)
        k = PRIOR_STRENGTH
        # Each route's prior: its global mean (itself shrunk toward the
        # overall one), and its variance (times k, as the estimate adds it).
        prior_mean = (total * route_mean + k * overall) / (total + k)
        prior_var = (total * route_var + k * overall_var) / (total + k)
        self.prior_mean = prior_mean.tolist()
        self.k_prior_var = (k * prior_var).tolist()

    def _near(self, query: np.ndarray) -> list[float] | None:
        """Similarity-weighted (n, sum, sum of squares) of every route, as one
        list of 3 x routes; None without patterns or routes."""
        if not self.routes or not len(self.unit):
            return None
        scores = self.unit @ query
        norm = math.sqrt(float(query @ query))
        if norm < NORM_EPSILON:  # no direction: every pattern alike
            weights = np.ones(len(scores), dtype=np.float32)
        else:
            weights = np.exp((scores - scores.max()) * np.float32(1.0 / (norm * TEMPERATURE)))
        near: list[float] = (weights @ self.table).tolist()
        return near

    def estimate(
        self, query: np.ndarray, candidates: Sequence[str] | None = None
    ) -> list[tuple[str, float, float, float]]:
        """(route, expected quality, support, standard error) per candidate
        (None: every route of the statistics), in candidate order. Plain
        Python floats: for a handful of routes, faster than numpy calls."""
        near = self._near(query)
        k = PRIOR_STRENGTH
        width = len(self.routes)
        if near is None:
            counts = totals = within = [0.0] * width
            typical, local_n = None, 0.0
        else:
            counts, totals, squares = near[:width], near[width : 2 * width], near[2 * width :]
            within = [
                max(sq - t * t / n, 0.0) if n > 0 else 0.0
                for n, t, sq in zip(counts, totals, squares, strict=True)
            ]
            typical, local_n = _typical(counts, totals)
        priors, unseen = self.prior_mean, self.unseen[0]
        if typical is not None:  # near q, a route is a priori as good as a typical one here
            shift, denominator = local_n * typical, local_n + k
            priors = [(shift + k * p) / denominator for p in priors]
            unseen = (shift + k * unseen) / denominator
        out = []
        for name in self.routes if candidates is None else candidates:
            c = self.column.get(name)
            if c is None:  # never seen: the overall mean (and variance) is its prior
                denominator = k
                mean, var, n = unseen, self.unseen[1], 0.0
            else:
                n = counts[c]
                denominator = n + k
                mean = (totals[c] + k * priors[c]) / denominator
                var = (within[c] + self.k_prior_var[c]) / denominator
            out.append((name, mean, n, math.sqrt(var / denominator)))
        return out

    def recommend(
        self,
        query: np.ndarray,
        k: int,
        candidates: Sequence[str] | None = None,
        explore: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[RouteRecommendation]:
        """The k best routes for `query`. explore None ranks by the estimate
        (deterministic); "ucb" by the band's upper end; "thompson" by one draw
        from each route's normal posterior (estimate, standard error)."""
        rows = self.estimate(query, candidates)
        if not rows or k <= 0:
            return []
        if explore is None:
            keys = [mean for _, mean, _, _ in rows]
        elif explore == "ucb":
            keys = [mean + Z * se for _, mean, _, se in rows]
        else:
            rng = rng if rng is not None else _DEFAULT_RNG
            draws = rng.standard_normal(len(rows)).tolist()
            keys = [mean + se * z for (_, mean, _, se), z in zip(rows, draws, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: (-keys[i], i))[:k]
        out = []
        for i in order:
            name, mean, n, se = rows[i]
            low = min(max(mean - Z * se, 0.0), 1.0)
            high = min(max(mean + Z * se, 0.0), 1.0)
            out.append(RouteRecommendation(name, mean, n, low, high))
        return out


def _typical(counts: list[float], totals: list[float]) -> tuple[float | None, float]:
    """The quality of a typical route near the query: the mean of the routes'
    local means, each weighted by its confidence n / (n + K) (not by n: a
    router plays the best route most, and a count-weighted mean would make
    that route's quality everyone's prior); and the local count."""
    k = PRIOR_STRENGTH
    weighted = weights = local_n = 0.0
    for n, total in zip(counts, totals, strict=True):
        if n > 0:
            a = n / (n + k)
            weighted += a * total / n
            weights += a
            local_n += n
    return (weighted / weights if weights > 0 else None), local_n
