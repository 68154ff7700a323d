"""Route statistics per pattern (migration 0004), scored find_patterns and
recommend_routes, on SQLite and PostgreSQL. Expected values are computed
here from the stored members and centroids, independently of the code."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore, ValidationError
from sona_store.learning import routes as routes_module

from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3)


def _items(seed: int) -> list[dict[str, Any]]:
    """Two groups around +x and +y, routes a/b/none (one "solo" trajectory),
    and one outlier at -x-y that forms a one-member pattern."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(24):
        centre = np.eye(DIM)[i % 2] * 3
        route = ["a", "b", None][i % 3]
        items.append(
            {
                "query_embedding": (centre + rng.normal(0, 0.3, DIM)).tolist(),
                "steps": [],
                "quality": float(rng.uniform(0.2, 1.0)),
                "model_route": route,
            }
        )
    items[5]["model_route"] = "solo"
    outlier = -(np.eye(DIM)[0] + np.eye(DIM)[1]) * 3
    items.append({"query_embedding": outlier.tolist(), "steps": [], "quality": 0.7})
    items[-1]["model_route"] = "lonely"
    return items


def _unit(v: Any) -> np.ndarray:
    x = np.asarray(v, dtype=np.float64)
    return x / np.linalg.norm(x)


def _expected_rows(store: SonaStore, items: list[dict[str, Any]]) -> list[tuple]:
    """Members by nearest stored centroid (checked against cluster sizes),
    then count, mean and squared deviations per route, in plain Python."""
    patterns = store.patterns()
    centroids = np.array([p.centroid for p in patterns], dtype=np.float64)
    members: dict[int, list[dict[str, Any]]] = {p.id: [] for p in patterns}
    for item in items:
        e = _unit(item["query_embedding"])  # no steps: the embedding is the unit query
        nearest = int(np.argmin(((centroids - e) ** 2).sum(axis=1)))
        members[patterns[nearest].id].append(item)
    for p in patterns:
        assert len(members[p.id]) == p.cluster_size
    rows = []
    for p in patterns:
        by_route: dict[str | None, list[float]] = {}
        for item in members[p.id]:
            by_route.setdefault(item.get("model_route"), []).append(item["quality"])
        for route, qualities in by_route.items():
            mean = statistics.fmean(qualities)
            rows.append(
                (p.id, route, len(qualities), mean, sum((q - mean) ** 2 for q in qualities))
            )
    return sorted(rows, key=lambda r: (r[0], r[1] or ""))


def _stored_rows(store: SonaStore, cycle_id: int | None = None) -> list[tuple]:
    return sorted(
        (
            (
                r["pattern_id"],
                r["model_route"],
                r["trajectory_count"],
                r["mean_quality"],
                r["sum_squared_deviations"],
            )
            for r in store.pattern_routes(cycle_id)
        ),
        key=lambda r: (r[0], r[1] or ""),
    )


def _assert_rows_equal(got: list[tuple], expected: list[tuple]) -> None:
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[3] == pytest.approx(e[3], rel=1e-12, abs=1e-12)
        assert g[4] == pytest.approx(e[4], rel=1e-9, abs=1e-12)


def test_route_statistics_equal_a_direct_computation(db_url):
    items = _items(0)
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(items)
        assert store.run_cycle(force=True).status == "completed"
        expected = _expected_rows(store, items)
        got = _stored_rows(store)
        _assert_rows_equal(got, expected)
        # The cases the statistics must get right are all there.
        assert any(r[1] is None for r in got)  # trajectories without a route
        assert any(r[1] == "solo" and r[2] == 1 and r[4] == 0.0 for r in got)
        assert any(p.cluster_size == 1 for p in store.patterns())  # one-member pattern
        assert [r[2] for r in got if r[1] == "lonely"] == [1]
        # The view shows the same rows, with the sample variance.
        with store.engine.connect() as conn:
            view = conn.execute(
                sa.text(
                    "SELECT pattern_id, model_route, trajectory_count, mean_quality,"
                    " sum_squared_deviations, quality_variance FROM current_pattern_routes"
                )
            ).all()
        _assert_rows_equal(
            sorted((tuple(r[:5]) for r in view), key=lambda r: (r[0], r[1] or "")), expected
        )
        for row in view:
            if row[2] == 1:
                assert row[5] is None
            else:
                assert row[5] == pytest.approx(row[4] / (row[2] - 1))


def test_second_cycle_aggregates_its_whole_window(db_url):
    """Statistics cover the window (earlier batches too), not just the batch."""
    first, second = _items(1), _items(2)
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(first)
        store.run_cycle(force=True)
        store.record_trajectories(second)
        store.run_cycle(force=True)
        _assert_rows_equal(_stored_rows(store), _expected_rows(store, first + second))
        assert sum(r[2] for r in _stored_rows(store)) == len(first) + len(second)


def test_route_statistics_roll_back_and_restore_with_their_cycle(db_url):
    with SonaStore(db_url, CONFIG, head_refresh_seconds=3600.0) as store:
        store.record_trajectories(_items(3))
        store.run_cycle(force=True)
        one = _stored_rows(store)
        q = _items(3)[0]["query_embedding"]
        before = store.recommend_routes(q)
        batch = _items(4)
        for item in batch:  # cycle 2: route "a" is now excellent everywhere
            if item.get("model_route") == "a":
                item["quality"] = 1.0
        store.record_trajectories(batch)
        store.run_cycle(force=True)
        two = _stored_rows(store)
        after = store.recommend_routes(q)
        assert two != one and after != before
        assert after[0].route == "a"

        store.rollback(2)
        assert _stored_rows(store) == one
        assert store.recommend_routes(q) == before  # served again from cycle 1's rows
        assert _stored_rows(store, 2) == two  # history keeps cycle 2's rows

        store.restore(2)
        assert _stored_rows(store) == two
        assert store.recommend_routes(q) == after


def test_a_failed_cycle_writes_no_route_statistics(db_url, monkeypatch):
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(_items(5))

        def explode(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("boom after the patterns")

        monkeypatch.setattr("sona_store.services.cycle.learn", explode)
        with pytest.raises(Exception, match="boom"):
            store.run_cycle(force=True)
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pattern_routes")).scalar_one() == 0


# -- find_patterns scores ---------------------------------------------------------------


def test_find_patterns_scores_are_the_cosine_similarity(db_url):
    with SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=5)) as store:
        store.record_trajectories(make_trajectories(40, DIM, seed=7))
        store.run_cycle(force=True)
        rng = np.random.default_rng(8)
        for _ in range(5):
            q = rng.normal(size=DIM)
            found = store.find_patterns(q, k=3)
            assert len(found) == 3
            for p in found:
                c = np.asarray(p.centroid, dtype=np.float64)
                cosine = float(q @ c / (np.linalg.norm(q) * np.linalg.norm(c)))
                assert isinstance(p.score, float)
                assert p.score == pytest.approx(cosine, abs=1e-6)
            scores = [p.score for p in found]
            assert scores == sorted(scores, reverse=True)
            everything = {p.id: p for p in store.patterns()}
            best = max(everything.values(), key=lambda p: p.similarity(q))
            assert found[0].id == best.id
            assert found[0].to_dict()["score"] == found[0].score
        assert all(p.score == 0.0 for p in store.find_patterns(np.zeros(DIM), k=2))


# -- recommend_routes -----------------------------------------------------------------------


def test_recommend_on_a_store_without_patterns_or_routes(db_url):
    with SonaStore(db_url, CONFIG, head_refresh_seconds=0.0) as store:
        q = np.ones(DIM)
        assert store.recommend_routes(q) == []  # no patterns, no candidates: nothing to rank
        prior = store.recommend_routes(q, routes=["x", "y"])
        assert [r.route for r in prior] == ["x", "y"]  # ties keep the caller's order
        for r in prior:
            assert r.support == 0.0 and r.low < r.expected_quality < r.high
            assert r.expected_quality == 0.5
        # Patterns, but no trajectory had a route.
        store.record_trajectories(make_trajectories(20, DIM, seed=9))
        store.run_cycle(force=True)
        assert store.patterns()
        assert store.recommend_routes(q) == []
        assert [r.support for r in store.recommend_routes(q, routes=["x"])] == [0.0]


def _independent_estimate(store: SonaStore, q: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """The documented estimator (docs/learning.md), written out again:
    route -> (expected quality, support, standard error)."""
    k, temperature = 4.0, 0.05
    patterns = {p.id: p for p in store.patterns()}
    rows = [r for r in store.pattern_routes() if r["model_route"] is not None]
    sims = {i: p.similarity(q) for i, p in patterns.items()}
    best = max(sims.values())
    weight = {i: math.exp((s - best) / temperature) for i, s in sims.items()}
    cells: dict[str, list[tuple[float, int, float, float]]] = {}
    for r in rows:
        cells.setdefault(r["model_route"], []).append(
            (
                weight[r["pattern_id"]],
                r["trajectory_count"],
                r["mean_quality"],
                r["sum_squared_deviations"],
            )
        )
    everything = [c for cs in cells.values() for c in cs]
    n_all = sum(c[1] for c in everything)
    overall = sum(c[1] * c[2] for c in everything) / n_all
    overall_var = sum(c[3] + c[1] * (c[2] - overall) ** 2 for c in everything) / n_all
    local = {}  # route -> (weighted count, weighted sum) near q
    for route, cs in cells.items():
        local[route] = (sum(c[0] * c[1] for c in cs), sum(c[0] * c[1] * c[2] for c in cs))
    confidence = {r: n / (n + k) for r, (n, _) in local.items() if n > 0}
    typical = sum(a * local[r][1] / local[r][0] for r, a in confidence.items()) / sum(
        confidence.values()
    )
    local_n = sum(n for n, _ in local.values())
    out = {}
    for route, cs in cells.items():
        total = sum(c[1] for c in cs)
        g_mean = sum(c[1] * c[2] for c in cs) / total
        g_var = sum(c[3] + c[1] * (c[2] - g_mean) ** 2 for c in cs) / total
        prior = (total * g_mean + k * overall) / (total + k)
        prior = (local_n * typical + k * prior) / (local_n + k)
        prior_var = (total * g_var + k * overall_var) / (total + k)
        n, sums = local[route]
        mean_here = sums / n
        within = sum(c[0] * (c[3] + c[1] * (c[2] - mean_here) ** 2) for c in cs)
        mean = (sums + k * prior) / (n + k)
        var = (within + k * prior_var) / (n + k)
        out[route] = (mean, n, math.sqrt(var / (n + k)))
    return out


def test_recommend_matches_the_documented_estimator(db_url):
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(_items(10))
        store.run_cycle(force=True)
        rng = np.random.default_rng(11)
        for _ in range(4):
            q = rng.normal(size=DIM)
            got = store.recommend_routes(q, k=10)
            expected = _independent_estimate(store, q)
            assert {r.route for r in got} == set(expected)
            assert [r.expected_quality for r in got] == sorted(
                (r.expected_quality for r in got), reverse=True
            )
            for r in got:
                mean, n, se = expected[r.route]
                assert r.expected_quality == pytest.approx(mean, rel=1e-5)
                assert r.support == pytest.approx(n, rel=1e-5)
                assert r.low == pytest.approx(max(mean - 1.96 * se, 0.0), rel=1e-5, abs=1e-9)
                assert r.high == pytest.approx(min(mean + 1.96 * se, 1.0), rel=1e-5, abs=1e-9)
            assert store.recommend_routes(q, k=1) == got[:1]


def _group(centre: np.ndarray, n: int, route: str, quality: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "query_embedding": (centre + rng.normal(0, 0.2, DIM)).tolist(),
            "steps": [],
            "quality": quality,
            "model_route": route,
        }
        for _ in range(n)
    ]


def test_a_route_seen_twice_does_not_win_by_noise(db_url):
    """Near +x: "steady" 40 times at 0.85, "lucky" twice at 1.0, "other" 20
    times at 0.4; far away (+y) lucky is everywhere at 1.0. Lucky's estimate
    is shrunk toward what a typical route gets near +x, below steady's, and
    its band is wider."""
    x, y = np.eye(DIM)[0] * 3, np.eye(DIM)[1] * 3
    items = _group(x, 40, "steady", 0.85, 1) + _group(x, 2, "lucky", 1.0, 2)
    items += _group(x, 20, "other", 0.4, 3) + _group(y, 30, "lucky", 1.0, 4)
    with SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=2)) as store:
        store.record_trajectories(items)
        store.run_cycle(force=True)
        ranked = store.recommend_routes(x, k=3)
        assert [r.route for r in ranked] == ["steady", "lucky", "other"]
        steady, lucky = ranked[0], ranked[1]
        assert lucky.expected_quality < 1.0 and lucky.support == pytest.approx(2.0)
        assert lucky.high - lucky.low > steady.high - steady.low
        assert steady.support == pytest.approx(40.0)


def test_explore_and_bad_arguments(db_url):
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(_items(12))
        store.run_cycle(force=True)
        q = np.ones(DIM)
        assert store.recommend_routes(q) == store.recommend_routes(q)  # deterministic
        draws = [
            store.recommend_routes(q, explore="thompson", rng=np.random.default_rng(s))
            for s in (1, 1, 2)
        ]
        assert draws[0] == draws[1]
        seen = {
            store.recommend_routes(q, k=1, explore="thompson", rng=np.random.default_rng(s))[
                0
            ].route
            for s in range(40)
        }
        assert len(seen) > 1  # Thompson tries more than one route
        ucb = store.recommend_routes(q, explore="ucb")
        assert [r.high for r in ucb] == sorted((r.high for r in ucb), reverse=True)
        assert store.recommend_routes(q, k=0) == []
        for kwargs, field in (
            ({"explore": "greedy"}, "explore"),
            ({"routes": "a"}, "routes"),
            ({"routes": ["a", "a"]}, "routes"),
            ({"routes": ["a", ""]}, "routes"),
            ({"k": 1.5}, "k"),
        ):
            with pytest.raises(ValidationError) as info:
                store.recommend_routes(q, **kwargs)
            assert info.value.field == field
        with pytest.raises(ValidationError):
            store.recommend_routes(np.ones(DIM + 1))


def test_statistics_of_an_empty_window_are_empty():
    """The pure function on its edge cases (no members, no patterns)."""
    assert routes_module.route_statistics([], [], np.zeros(0)) == []
    assert routes_module.route_statistics([np.zeros(0, dtype=np.int64)], ["a"], np.ones(1)) == []
