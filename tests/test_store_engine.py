"""An engine of the caller's (`SonaStore(engine=...)`) gets the store's
per-dialect settings, and stays the caller's: `close()` does not dispose it.
The store's own engine takes `engine_options` instead."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db.engine import normalise_url, transaction
from sona_store.db.locks import acquire_cycle_lock
from sona_store.errors import ConfigError, CycleInProgressError
from sona_store.services import cycle as cycle_module

from .helpers import make_trajectories


@pytest.fixture
def plain_engine(db_url):
    """A plain SQLAlchemy engine, used once before the store sees it (so its
    pool holds a connection made without the store's settings)."""
    engine = sa.create_engine(normalise_url(db_url))
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_plain_engine_gets_the_store_settings(db_url, plain_engine, small_config):
    with SonaStore(engine=plain_engine, config=small_config) as store:
        assert store.url == plain_engine.url.render_as_string(hide_password=False)
        if plain_engine.dialect.name == "sqlite":
            with plain_engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        # Foreign keys hold: a trajectory consumed by a cycle that does not exist is refused.
        store.record_trajectories(make_trajectories(20, small_config.embedding_dim))
        with pytest.raises(sa.exc.IntegrityError), plain_engine.begin() as conn:
            conn.execute(sa.text("UPDATE trajectories SET consumed_by_cycle_id = 999"))
        assert store.run_cycle(force=True).status == "completed"


def test_a_plain_engine_holds_the_cycle_lock(db_url, plain_engine, small_config):
    """The lock a cycle takes (SQLite: BEGIN IMMEDIATE, which a deferred BEGIN
    would not take; PostgreSQL: the advisory lock) keeps another writer out."""
    with (
        SonaStore(engine=plain_engine, config=small_config) as store,
        SonaStore(db_url) as other,
    ):
        store.record_trajectories(make_trajectories(20, small_config.embedding_dim))
        with transaction(store.engine, immediate=True) as session:
            acquire_cycle_lock(session)
            if plain_engine.dialect.name == "sqlite":
                raw = sqlite3.connect(plain_engine.url.database, timeout=0)
                try:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        raw.execute("BEGIN IMMEDIATE")
                finally:
                    raw.close()
            else:
                with pytest.raises(CycleInProgressError):
                    cycle_module.run_cycle(other.engine, other.config, wait_for_lock=False)
        assert other.run_cycle(force=True).status == "completed"


def test_close_leaves_the_callers_engine_usable(plain_engine, small_config):
    pool = plain_engine.pool
    store = SonaStore(engine=plain_engine, config=small_config)
    store.record_trajectories(make_trajectories(3, small_config.embedding_dim))
    store.close()
    assert plain_engine.pool is pool  # not disposed (dispose replaces the pool)
    with plain_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM trajectories")).scalar() == 3
    # The engine serves a second store, configured once.
    with SonaStore(engine=plain_engine) as again:
        assert again.pending_count() == 3


def test_engine_options_shape_the_stores_own_engine(db_url, small_config):
    store = SonaStore(db_url, small_config, engine_options={"pool_size": 3})
    pool = store.engine.pool
    assert isinstance(pool, sa.pool.QueuePool) and pool.size() == 3
    store.close()
    assert store.engine.pool is not pool  # the store's own engine is disposed


def test_a_url_that_disagrees_with_the_engine_is_refused(plain_engine, tmp_path):
    with pytest.raises(ConfigError, match="differ"):
        SonaStore(f"sqlite:///{tmp_path / 'other.db'}", engine=plain_engine)
    with pytest.raises(ConfigError, match="engine_options"):
        SonaStore(engine=plain_engine, engine_options={"pool_size": 3})


def test_an_engine_of_another_driver_is_refused(tmp_path):
    engine = sa.create_engine(f"sqlite+pysqlcipher:///{tmp_path / 'x.db'}", module=sqlite3)
    try:
        with pytest.raises(ConfigError, match="pysqlite"):
            SonaStore(engine=engine)
    finally:
        engine.dispose()


def test_a_plain_postgresql_engine_keeps_the_store_in_its_schema(db_url, plain_engine):
    """search_path is set on the connection the engine pooled before it was
    given, and on every new one: the store's tables go in its schema only."""
    if plain_engine.dialect.name != "postgresql":
        pytest.skip("schemas are PostgreSQL's")
    config = SonaConfig(hidden_dim=8, pattern_clusters=4)
    with SonaStore(engine=plain_engine, config=config, schema="router_eu") as store:
        store.record_trajectories(make_trajectories(3, config.embedding_dim))
    inspector = sa.inspect(plain_engine)
    assert "trajectories" in inspector.get_table_names(schema="router_eu")
    assert "trajectories" not in inspector.get_table_names(schema="public")
    with SonaStore(db_url, schema="router_eu") as again:
        assert again.pending_count() == 3


def test_a_plain_engine_gets_the_durability_asked_for(plain_engine, small_config):
    if plain_engine.dialect.name != "sqlite":
        pytest.skip("durability sets SQLite's synchronous")
    with (
        SonaStore(engine=plain_engine, config=small_config, durability="full"),
        plain_engine.connect() as conn,
    ):
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    with pytest.raises(ConfigError, match="durability='normal' but the engine was created"):
        SonaStore(engine=plain_engine)
