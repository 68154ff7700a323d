"""The quarantine migration: a populated store at the previous revision is
upgraded with nothing lost, and works (quarantine included); down and up
again round-trips."""

from __future__ import annotations

import importlib.util

import numpy as np
import sqlalchemy as sa

from sona_store import SonaStore
from sona_store.db import schema
from sona_store.db.engine import create_store_engine
from sona_store.db.models import Base

from .test_quarantine import CONFIG, bad, good

NEW_TABLES = {"quarantines", "quarantined_trajectories", "micro_lora_replays"}


def _migration():
    (path,) = schema.migrations_dir().glob("versions/*_quarantine.py")
    spec = importlib.util.spec_from_file_location("quarantine_migration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(engine: sa.Engine) -> dict:
    """Every row of every table the previous revision has, in id order."""
    out = {}
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())  # later revisions' are not
        for table in sorted(set(Base.metadata.tables) & present - NEW_TABLES):
            columns = Base.metadata.tables[table].primary_key.columns
            order = ", ".join(c.name for c in columns)
            rows = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}")).all()
            out[table] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                          for r in rows]  # fmt: skip
    return out


def test_upgrade_from_the_previous_revision_keeps_everything(db_url):
    migration = _migration()
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(good(1))
        store.run_cycle(force=True)
        ids = store.record_trajectories(bad())
        store.record_trajectories(good(2))
        store.run_cycle(force=True)
        micro = store.lora_state(tier="micro").up.copy()
    finally:
        store.close()
    engine = create_store_engine(db_url)
    try:
        schema.downgrade(engine, migration.down_revision)
        assert schema.database_revision(engine) == migration.down_revision
        with engine.connect() as conn:
            assert NEW_TABLES.isdisjoint(sa.inspect(conn).get_table_names())
        before = _snapshot(engine)
        assert before["trajectories"] and before["micro_lora_signals"]
        schema.upgrade(engine, migration.revision)
        assert schema.database_revision(engine) == migration.revision
        assert _snapshot(engine) == before
        schema.upgrade(engine)
    finally:
        engine.dispose()
    store = SonaStore(db_url, CONFIG, create=False)
    try:
        assert np.array_equal(store.lora_state(tier="micro").up, micro)
        result = store.quarantine(ids, reason="after the upgrade")
        assert result.cycles_rolled_back and result.micro_versions_written == 1
        assert store.run_cycle(force=True).trajectories_processed == 12
    finally:
        store.close()


def test_downgrade_drops_the_quarantine_tables_and_keeps_the_rest(db_url):
    migration = _migration()
    store = SonaStore(db_url, CONFIG)
    try:
        ids = store.record_trajectories(bad())
        store.quarantine(ids, reason="bad")
    finally:
        store.close()
    engine = create_store_engine(db_url)
    try:
        with engine.connect() as conn:
            trajectories = conn.execute(sa.text("SELECT count(*) FROM trajectories")).scalar_one()
        schema.downgrade(engine, migration.down_revision)
        with engine.connect() as conn:
            assert NEW_TABLES.isdisjoint(sa.inspect(conn).get_table_names())
            count = conn.execute(sa.text("SELECT count(*) FROM trajectories")).scalar_one()
        assert count == trajectories == len(ids)
        schema.upgrade(engine)
    finally:
        engine.dispose()
