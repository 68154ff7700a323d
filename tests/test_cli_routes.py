"""`sona-store patterns --near` and `sona-store recommend` on both backends."""

from __future__ import annotations

import json

import numpy as np

from sona_store import SonaConfig, SonaStore

from .helpers import make_trajectories
from .test_cli import DIM, assert_one_line_error, run, run_json


def _store(db_url: str) -> list[float]:
    """A store with one cycle over routed trajectories; a query vector."""
    items = make_trajectories(30, DIM, seed=4)
    for i, item in enumerate(items):
        item["model_route"] = ("fast", "smart", None)[i % 3]
    with SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)) as store:
        store.record_trajectories(items)
        store.run_cycle(force=True)
    return items[0]["query_embedding"]


def test_patterns_near_prints_scored_matches(db_url, tmp_path, capsys):
    q = _store(db_url)
    found = run_json(
        capsys, "--url", db_url, "patterns", "--near", json.dumps(q), "-k", "2", "--json"
    )
    assert len(found) == 2
    with SonaStore(db_url) as store:
        expected = store.find_patterns(q, k=2)
    assert [p["id"] for p in found] == [p.id for p in expected]
    assert [p["score"] for p in found] == [p.score for p in expected]
    # A file holding a trajectory line works too; the text table shows the score.
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"query_embedding": q}))
    code, out, _ = run(capsys, "--url", db_url, "patterns", "--near", str(path), "-k", "1")
    assert code == 0 and "score" in out.splitlines()[0]
    assert len(out.strip().splitlines()) == 2


def test_recommend_prints_ranked_routes(db_url, capsys):
    q = _store(db_url)
    rows = run_json(capsys, "--url", db_url, "recommend", "--near", json.dumps(q), "--json")
    with SonaStore(db_url) as store:
        expected = store.recommend_routes(q)
    assert [r["route"] for r in rows] == [r.route for r in expected] and len(rows) == 2
    assert rows[0]["expected_quality"] == expected[0].expected_quality
    assert set(rows[0]) == {"route", "expected_quality", "support", "low", "high"}
    rows = run_json(
        capsys, "--url", db_url, "recommend", "--near", json.dumps(q),
        "--routes", "smart,new", "-k", "1", "--explore", "ucb", "--json",
    )  # fmt: skip
    assert len(rows) == 1 and rows[0]["route"] in ("smart", "new")
    code, out, _ = run(capsys, "--url", db_url, "recommend", "--near", json.dumps(q))
    assert code == 0 and out.splitlines()[0].split()[:2] == ["route", "expected_quality"]


def test_recommend_on_an_empty_store_and_bad_queries(db_url, capsys):
    SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)).close()
    q = json.dumps(np.ones(DIM).tolist())
    code, out, err = run(capsys, "--url", db_url, "recommend", "--near", q)
    assert code == 0 and "no routes" in out
    code, _, err = run(capsys, "--url", db_url, "recommend", "--near", "[1, 2]")
    assert_one_line_error(code, err, "query must be 8 finite numbers")
    code, _, err = run(capsys, "--url", db_url, "patterns", "--near", "[1, oops]")
    assert_one_line_error(code, err, "--near")
    code, _, err = run(capsys, "--url", db_url, "recommend", "--near", q, "--routes", "a,a")
    assert_one_line_error(code, err, "duplicates")
