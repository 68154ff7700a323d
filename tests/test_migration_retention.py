"""The retention migration (migrations/versions/*_retention.py): a populated
store at the previous revision upgrades with nothing lost, and works (cycles,
gc, rollback); downgrading is refused while some vectors are gone."""

from __future__ import annotations

import importlib.util

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db import schema
from sona_store.db.engine import create_store_engine

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3, retention_window=10)
TABLES = (
    "trajectories",
    "trajectory_vectors",
    "trajectory_steps",
    "micro_lora_signals",
    "cycles",
    "patterns",
    "lora_versions",
    "ewc_states",
    "audit_log",
)


def _migration():
    [path] = (schema.migrations_dir() / "versions").glob("*_retention.py")
    spec = importlib.util.spec_from_file_location("retention_migration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIGRATION = _migration()


def _snapshot(engine: sa.Engine) -> dict[str, list]:
    with engine.connect() as c:
        return {
            table: [tuple(row) for row in c.execute(sa.text(f"SELECT * FROM {table}")).all()]
            for table in TABLES
        }


def _populate(url: str) -> None:
    """Cycles, a rollback and a restore, pending trajectories, micro-LoRA
    versions."""
    store = SonaStore(url, CONFIG)
    try:
        for seed in range(4):
            store.record_trajectories(make_trajectories(12, 8, seed=seed, steps=1 + seed % 2))
            store.run_cycle(force=True)
        store.rollback(4, reason="bad")
        store.restore(4)
        store.record_trajectories(make_trajectories(5, 8, seed=9))
        store.flush()
    finally:
        store.close()


def test_upgrade_from_the_previous_revision_keeps_everything(db_url):
    _populate(db_url)
    engine = create_store_engine(db_url)
    try:
        # The store at the previous revision (the pattern of test_migration_0003).
        schema.downgrade(engine, MIGRATION.down_revision)
        with engine.connect() as c:
            assert "retention_policy" not in sa.inspect(c).get_table_names()
        before = _snapshot(engine)
        assert len(before["trajectory_vectors"]) == len(before["micro_lora_signals"]) == 4 * 12 + 5
        schema.upgrade(engine)
        assert schema.database_revision(engine) == schema.head_revision()
        after = _snapshot(engine)
        # Every row is still there; trajectories gained one column, NULL.
        for table in TABLES:
            if table != "trajectories":
                assert after[table] == before[table], table
        assert [row[:-1] for row in after["trajectories"]] == before["trajectories"]
        assert all(row[-1] is None for row in after["trajectories"])
        assert len(after["trajectories"]) == 4 * 12 + 5
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM retention_policy")).scalar() == 0
    finally:
        engine.dispose()
    store = SonaStore(db_url, create=False)
    try:
        result = store.gc(older_than=0, horizon_cycles=1)
        assert result.trajectories == 3 * 12 - CONFIG.retention_window
        assert store.run_cycle(force=True).status == "completed"
        assert store.rollback(5, requeue=True).trajectories_requeued == 5
    finally:
        store.close()


def test_downgrade_is_refused_while_vectors_are_gone(db_url):
    store = SonaStore(db_url, CONFIG)
    try:
        for seed in range(3):
            store.record_trajectories(make_trajectories(12, 8, seed=seed))
            store.run_cycle(force=True)
        store.flush()
        assert store.gc(older_than=0, horizon_cycles=1).trajectories > 0
    finally:
        store.close()
    engine = create_store_engine(db_url)
    try:
        with pytest.raises(Exception, match="ingest --restore"):
            schema.downgrade(engine, MIGRATION.down_revision)
        assert schema.database_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()
