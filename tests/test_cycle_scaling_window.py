"""What the cycle's scaling work must not change: the retention window read in
batches through the driver's cursor, and k-means done a block of points at a
time (same seeds, assignments and centroids as one pass over all points)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

import sona_store.db.trajectories as trajectories
import sona_store.learning.kmeans as kmeans
from sona_store import SonaConfig, SonaStore
from sona_store.db.engine import transaction
from sona_store.learning.embedding import trajectory_embeddings
from sona_store.learning.patterns import extract_patterns

from .helpers import make_trajectories


def _expected_window(store: SonaStore, limit: int) -> tuple[list[int], list[float], np.ndarray]:
    """The window by plain queries: completed cycles' trajectories, newest
    `limit`, oldest first, each embedded on its own from its query and steps."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT t.id, t.quality, v.query_embedding FROM trajectories t "
                "JOIN cycles c ON c.id = t.consumed_by_cycle_id "
                "JOIN trajectory_vectors v ON v.trajectory_id = t.id "
                "WHERE c.status = 'completed'"
            )
        ).all()
        cycle_of = dict(
            conn.execute(sa.text("SELECT id, consumed_by_cycle_id FROM trajectories")).all()
        )
        steps: dict[int, list] = {}
        for tid, acts, reward in conn.execute(
            sa.text(
                "SELECT trajectory_id, activations, reward FROM trajectory_steps "
                "ORDER BY trajectory_id, step_index"
            )
        ):
            steps.setdefault(tid, []).append((np.frombuffer(bytes(acts), "<f4"), reward))
    rows.sort(key=lambda r: (cycle_of[r[0]], r[0]))
    rows = rows[-limit:] if limit else []
    vectors = []
    for tid, _quality, query in rows:
        own = steps.get(tid, [])
        vectors.append(
            trajectory_embeddings(
                np.frombuffer(bytes(query), "<f4")[None, :],
                np.zeros(len(own), dtype=np.int64),
                np.array([a for a, _ in own], dtype=np.float32).reshape(len(own), 8),
                np.array([r for _, r in own], dtype=np.float32),
            )[0]
        )
    return [r[0] for r in rows], [r[1] for r in rows], np.array(vectors, dtype=np.float32)


@pytest.mark.parametrize("limit", [0, 1, 7, 30, 1000])
def test_window_in_batches_matches_a_plain_query(db_url, monkeypatch, limit):
    monkeypatch.setattr(trajectories, "WINDOW_FETCH", 4)  # several batches, a partial last one
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=3))
    try:
        cycles = []
        for seed, n in enumerate((9, 11, 6, 5)):
            # No step, one, three, two: embeddings of every shape.
            steps = (0, 1, 3, 2)[seed]
            store.record_trajectories(make_trajectories(n, 8, seed=seed, steps=steps))
            cycles.append(store.run_cycle(force=True).cycle_id)
        store.rollback(cycles[3], reason="test")  # its trajectories leave the window
        store.record_trajectories(make_trajectories(3, 8, seed=9))  # pending: not in it
        ids, qualities, vectors = _expected_window(store, limit)
        with transaction(store.engine) as session:
            got_ids, got_vectors, got_qualities = trajectories.load_window(session, limit, 8)
        assert got_ids.tolist() == ids
        assert got_qualities.tolist() == qualities
        assert got_vectors.dtype == np.float32 and got_vectors.shape == (len(ids), 8)
        assert np.array_equal(got_vectors, vectors.reshape(len(ids), 8))
    finally:
        store.close()


@pytest.mark.parametrize("fetch", [4, 1024])
def test_window_with_a_gap_of_rolled_back_ids(db_url, monkeypatch, fetch):
    """Rolled-back cycles leave a hole in the window's ids: read by id where a
    read would span twice its ids (fetch 4), as one range less the hole where
    it would not (fetch 1024); every trajectory's embedding as computed alone."""
    monkeypatch.setattr(trajectories, "WINDOW_FETCH", fetch)
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=3))
    try:
        cycles = []
        for seed, (n, steps) in enumerate(((9, 1), (4, 3), (2, 0), (6, 2))):
            if seed == 3:  # ids 10-15 leave the window; 16-21 come after them
                store.rollback(cycles[1], reason="test")
            store.record_trajectories(make_trajectories(n, 8, seed=seed, steps=steps))
            cycles.append(store.run_cycle(force=True).cycle_id)
        ids, qualities, vectors = _expected_window(store, 100)
        assert ids == [*range(1, 10), *range(16, 22)]
        with transaction(store.engine) as session:
            got_ids, got_vectors, got_qualities = trajectories.load_window(session, 100, 8)
        assert got_ids.tolist() == ids
        assert got_qualities.tolist() == qualities
        assert np.array_equal(got_vectors, vectors)
    finally:
        store.close()


def _clustered(n: int, d: int, topics: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d))
    points = centres[rng.integers(0, topics, n)] + rng.normal(0, 0.6, (n, d))
    points[rng.integers(0, n, n // 20)] = points[0]  # duplicates of the first seed
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


@pytest.mark.parametrize(("n", "d", "k"), [(1, 4, 1), (37, 8, 5), (700, 16, 12), (2500, 32, 40)])
def test_kmeans_blocks_do_not_change_the_result(monkeypatch, n, d, k):
    points = _clustered(n, d, max(k // 2, 1), seed=n)
    qualities = np.random.default_rng(1).uniform(0, 1, n)
    whole = kmeans.lloyd(points, k, 100, 0.001)
    patterns = extract_patterns(points, qualities, k)
    monkeypatch.setattr(kmeans, "BLOCK", 64)  # many blocks, a partial last one
    blocked = kmeans.lloyd(points, k, 100, 0.001)
    assert np.array_equal(blocked.assignments, whole.assignments)
    assert np.array_equal(blocked.centres, whole.centres)
    assert blocked.iterations == whole.iterations
    again = extract_patterns(points, qualities, k)
    assert [(p.cluster_size, p.total_weight, p.avg_quality) for p in again] == [
        (p.cluster_size, p.total_weight, p.avg_quality) for p in patterns
    ]
    assert all(np.array_equal(a.centroid, b.centroid) for a, b in zip(again, patterns, strict=True))


def test_nearest_two_on_rows_equals_on_their_copy(monkeypatch):
    monkeypatch.setattr(kmeans, "BLOCK", 50)
    points = _clustered(400, 16, 6, seed=3)
    norms = np.einsum("ij,ij->i", points, points)
    centres = points[[0, 5, 9, 77, 300]].copy()
    rows = np.flatnonzero(np.random.default_rng(2).uniform(size=400) < 0.4)
    on_rows = kmeans.nearest_two(points, norms, centres, rows)
    on_copy = kmeans.nearest_two(points[rows], norms[rows], centres)
    for a, b in zip(on_rows, on_copy, strict=True):
        assert np.array_equal(a, b)


def test_cluster_means_are_float64_means_of_the_members():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(3000, 12)).astype(np.float32)
    assignments = rng.integers(0, 7, 3000)
    assignments[assignments == 4] = 3  # an empty cluster
    means, sizes = kmeans.cluster_means(points, assignments, 7)
    assert sizes.tolist() == np.bincount(assignments, minlength=7).tolist()
    for c in range(7):
        members = points[assignments == c].astype(np.float64)
        expected = members.mean(axis=0) if len(members) else np.zeros(12)
        np.testing.assert_allclose(means[c], expected.astype(np.float32), rtol=0, atol=1e-7)
    assert not means[4].any()


@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_lloyd_far_from_the_origin_has_no_nan_bound(scale):
    """Points with large norms: float32 |x|^2 - 2x.c + |c|^2 can come out
    below zero; its square root used to be a NaN bound (a point never
    measured again). Now no invalid value, and every point ends at its
    nearest final centre."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 64)) * scale
    points = centres[rng.integers(0, 5, 2000)] + rng.normal(size=(2000, 64)) * scale * 1e-3
    points = points.astype(np.float32)
    with np.errstate(invalid="raise"):
        result = kmeans.lloyd(points, 5, 100, 1e-3)
    exact = (
        (points[:, None, :].astype(np.float64) - result.centres[None].astype(np.float64)) ** 2
    ).sum(-1)
    assert np.array_equal(result.assignments, exact.argmin(axis=1))
