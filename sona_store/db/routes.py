"""Route statistics rows (`pattern_routes`): written by a cycle with its
patterns, read back as the router's model of the current patterns."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.models import PatternRoute
from sona_store.learning.routes import RouteStatistic


def insert_route_statistics(
    session: Session, pattern_ids: list[int], statistics: list[RouteStatistic]
) -> None:
    """One row per statistic; `pattern_ids[s.pattern]` is its pattern's id."""
    if not statistics:
        return
    session.execute(
        sa.insert(PatternRoute),
        [
            {
                "pattern_id": pattern_ids[s.pattern],
                "model_route": s.route,
                "trajectory_count": s.count,
                "mean_quality": s.mean_quality,
                "sum_squared_deviations": s.sum_squared_deviations,
            }
            for s in statistics
        ],
    )


def route_rows(
    session: Session, pattern_ids: list[int]
) -> list[tuple[int, str | None, int, float, float]]:
    """(pattern id, route, count, mean quality, sum of squared deviations) of
    the given patterns, by pattern then id."""
    if not pattern_ids:
        return []
    statement = (
        sa.select(
            PatternRoute.pattern_id,
            PatternRoute.model_route,
            PatternRoute.trajectory_count,
            PatternRoute.mean_quality,
            PatternRoute.sum_squared_deviations,
        )
        .where(PatternRoute.pattern_id.in_(pattern_ids))
        .order_by(PatternRoute.pattern_id, PatternRoute.id)
    )
    return [
        (pattern_id, route, count, mean, squares)
        for pattern_id, route, count, mean, squares in session.execute(statement)
    ]


def route_matrices(
    pattern_ids: list[int], rows: list[tuple[int, str | None, int, float, float]]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(route names, counts, means, sums of squared deviations), each
    (patterns, routes) in `pattern_ids` order; rows without a route are left
    out (a router cannot choose "none")."""
    routes = sorted({r[1] for r in rows if r[1] is not None})
    column = {r: i for i, r in enumerate(routes)}
    position = {p: i for i, p in enumerate(pattern_ids)}
    shape = (len(pattern_ids), len(routes))
    counts, means, m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for pattern_id, route, count, mean, squared in rows:
        if route is None or pattern_id not in position:
            continue
        cell = position[pattern_id], column[route]
        counts[cell], means[cell], m2[cell] = count, mean, squared
    return routes, counts, means, m2
