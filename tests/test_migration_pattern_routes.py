"""Migration 0007 (route statistics per pattern): a populated store at the
previous revision upgrades without losing anything, its next cycle writes
route statistics, and downgrading drops exactly the new table and view."""

from __future__ import annotations

import importlib.util

import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db import schema
from sona_store.db.engine import create_store_engine
from sona_store.db.models import Base

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3)
TABLES = sorted(set(Base.metadata.tables) - {"pattern_routes"})


def _migration():
    path = schema.migrations_dir() / "versions" / "0007_pattern_routes.py"
    spec = importlib.util.spec_from_file_location("migration_pattern_routes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIGRATION = _migration()


def _routed(n: int, seed: int) -> list[dict]:
    items = make_trajectories(n, 8, seed=seed)
    for i, item in enumerate(items):
        item["model_route"] = ("a", "b", None)[i % 3]
    return items


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row of every table the previous revision has, in id order."""
    with engine.connect() as conn:
        out = {}
        for table in TABLES:
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            out[table] = sorted((tuple(r) for r in rows), key=repr)
        return out


def _names(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return set(inspector.get_table_names()) | set(inspector.get_view_names())


def test_a_populated_store_upgrades_and_its_next_cycle_writes_route_statistics(db_url):
    previous = MIGRATION.down_revision
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(_routed(20, 1))
        store.run_cycle(force=True)
        store.record_trajectories(_routed(15, 2))  # pending across the upgrade
    engine = create_store_engine(db_url)
    try:
        schema.downgrade(engine, previous)
        assert schema.database_revision(engine) == previous
        assert not {"pattern_routes", "current_pattern_routes"} & _names(engine)
        # Populate further at the previous revision, as its code would.
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE patterns SET access_count = 3"))
        before = _snapshot(engine)
        assert before["trajectories"] and before["patterns"]

        schema.upgrade(engine)
        assert schema.database_revision(engine) == schema.head_revision() == MIGRATION.revision
        assert {"pattern_routes", "current_pattern_routes"} <= _names(engine)
        assert _snapshot(engine) == before  # nothing lost or changed
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pattern_routes")).scalar_one() == 0
    finally:
        engine.dispose()

    with SonaStore(db_url, CONFIG, create=False) as store:
        assert store.recommend_routes([1.0] * 8) == []  # old patterns: no statistics
        result = store.run_cycle(force=True)
        assert result.trajectories_processed == 15
        rows = store.pattern_routes()
        assert sum(r["trajectory_count"] for r in rows) == 35  # the whole window
        assert {r["model_route"] for r in rows} == {"a", "b", None}
        assert [r.route for r in store.recommend_routes([1.0] * 8)] in (["a", "b"], ["b", "a"])


def test_downgrade_drops_only_the_route_statistics(db_url):
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(_routed(20, 3))
        store.run_cycle(force=True)
    engine = create_store_engine(db_url)
    try:
        before = _snapshot(engine)
        schema.downgrade(engine, MIGRATION.down_revision)
        assert _snapshot(engine) == before
        assert not {"pattern_routes", "current_pattern_routes"} & _names(engine)
    finally:
        engine.dispose()
