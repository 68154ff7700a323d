"""The background cycle: minimum, consumption, one transaction, history."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.services.cycle import CycleFailedError

from .helpers import make_trajectories


def _counts(store: SonaStore) -> dict[str, int]:
    tables = [
        "trajectories",
        "trajectory_steps",
        "cycles",
        "patterns",
        "lora_versions",
        "ewc_states",
        "vector_blobs",
        "audit_log",
    ]
    with store.engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}


def _pending(store: SonaStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM trajectories WHERE consumed_by_cycle_id IS NULL")
        ).scalar()


def test_non_forced_cycle_under_minimum_is_skipped_and_consumes_nothing(store):
    store.record_trajectories(make_trajectories(5, 8))
    skipped = store.run_cycle()
    assert skipped.status == "skipped"
    assert "insufficient trajectories (5 < 10 minimum" in skipped.reason
    assert skipped.trajectories_processed == 0
    assert _pending(store) == 5  # the reference's defect 1 drained them
    forced = store.run_cycle(force=True)
    assert forced.status == "completed"
    assert forced.trajectories_processed == 5
    assert _pending(store) == 0
    assert [r.status for r in store.history()] == ["completed", "skipped"]


def test_empty_queue_is_skipped_even_when_forced(store):
    result = store.run_cycle(force=True)
    assert result.status == "skipped"
    assert result.reason == "no trajectories to process"


def test_enough_trajectories_run_without_force(store):
    store.record_trajectories(make_trajectories(12, 8))
    result = store.run_cycle()
    assert result.status == "completed"
    assert result.trigger == "manual"
    assert result.trajectories_processed == 12


def test_window_spans_cycles_and_current_patterns_are_the_head_cycles(store):
    store.record_trajectories(make_trajectories(20, 8, seed=1))
    first = store.run_cycle(force=True)
    store.record_trajectories(make_trajectories(20, 8, seed=2))
    second = store.run_cycle(force=True)
    assert second.window_size == 40
    current = store.patterns()
    assert {p.cycle_id for p in current} == {second.cycle_id}
    # Older cycles' patterns stay queryable as history (no pile-up: defect 8).
    assert {p.cycle_id for p in store.patterns(cycle_id=first.cycle_id)} == {first.cycle_id}
    assert len(current) == second.patterns_extracted <= 4


def test_retention_window_keeps_the_most_recent(db_url):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=3, retention_window=25))
    try:
        for seed in range(3):
            store.record_trajectories(make_trajectories(10, 8, seed=seed))
            result = store.run_cycle(force=True)
        assert result.window_size == 25
        assert sum(p.cluster_size for p in store.patterns()) == 25
    finally:
        store.close()


def test_k_equal_one_centroid_is_member_mean(db_url):
    """Defect 7: the reference returns the seed trajectory as the centroid."""
    store = SonaStore(db_url, SonaConfig(hidden_dim=4, pattern_clusters=1))
    try:
        items = [
            {"query_embedding": [1, 0, 0, 0], "quality": 0.5},
            {"query_embedding": [0, 1, 0, 0], "quality": 0.7},
            {"query_embedding": [0, 0, 1, 0], "quality": 0.9},
        ]
        store.record_trajectories(items)
        store.run_cycle(force=True)
        (pattern,) = store.patterns()
        np.testing.assert_allclose(pattern.centroid, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-6)
        assert pattern.cluster_size == 3
        assert pattern.total_weight == pytest.approx(2.1, abs=1e-6)
        assert pattern.avg_quality == pytest.approx(0.7, abs=1e-6)
    finally:
        store.close()


def test_failed_cycle_leaves_only_a_failed_record(store, monkeypatch):
    store.record_trajectories(make_trajectories(15, 8))
    store.run_cycle(force=True)
    store.record_trajectories(make_trajectories(15, 8, seed=3))
    before = _counts(store)
    head_before = store.head()

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("sona_store.services.cycle.extract_patterns", explode)
    with pytest.raises(CycleFailedError) as info:
        store.run_cycle(force=True)
    after = _counts(store)
    assert after["cycles"] == before["cycles"] + 1
    assert {k: v for k, v in after.items() if k != "cycles"} == {
        k: v for k, v in before.items() if k != "cycles"
    }
    assert store.head() == head_before
    assert _pending(store) == 15
    failed = store.history(limit=1)[0]
    assert failed.cycle_id == info.value.cycle_id
    assert failed.status == "failed"
    assert "disk on fire" in failed.error
    monkeypatch.undo()
    assert store.run_cycle(force=True).trajectories_processed == 15


def test_history_is_newest_first_with_limit(store):
    for seed in range(3):
        store.record_trajectories(make_trajectories(10, 8, seed=seed))
        store.run_cycle()
    records = store.history()
    assert [r.cycle_id for r in records] == sorted((r.cycle_id for r in records), reverse=True)
    assert len(store.history(limit=2)) == 2
    assert all(r.started_at.tzinfo is not None for r in records)
    assert records[0].config["hidden_dim"] == 8


def test_store_reopens_with_its_configuration(db_url):
    SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=3)).close()
    reopened = SonaStore(db_url)
    try:
        assert reopened.config.hidden_dim == 8
        assert reopened.config.pattern_clusters == 3
    finally:
        reopened.close()
