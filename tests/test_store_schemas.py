"""Several stores in one PostgreSQL database, one schema each: names are
validated, SQLite refuses a schema, and two stores' cycles, rollbacks, locks,
SQL views, scheduled services and migrations are independent, while the
default store (no schema) stays what it always was."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main
from sona_store.db import schema as schema_module
from sona_store.db.engine import create_store_engine, transaction
from sona_store.db.locks import CYCLE_LOCK_KEY, acquire_cycle_lock, cycle_lock_key
from sona_store.db.stores import list_stores, validate_schema_name
from sona_store.errors import CycleInProgressError, SchemaVersionError, StoreSchemaError
from sona_store.services.cycle import run_cycle

from . import test_sql as sql_doc
from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from .helpers import make_trajectories
from .service_helpers import inspector, rows, scalar, wait_for

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3)
needs_pg = pytest.mark.skipif(PG_ADMIN_URL is None, reason="no PostgreSQL configured")


@pytest.fixture
def pg_url() -> Iterator[str]:
    if PG_ADMIN_URL is None:
        pytest.skip("no PostgreSQL configured (set SONA_STORE_TEST_PG)")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def in_schema(url: str, schema: str, sql: str) -> list[dict]:
    """Rows of `sql` run from outside sona_store, tables qualified by hand."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql.format(s=schema)))]
    finally:
        engine.dispose()


# -- names and backends --------------------------------------------------------------


@pytest.mark.parametrize("name", ["router_eu", "_x", "a1", "s" * 63])
def test_valid_schema_names(name):
    assert validate_schema_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Router", "1abc", "a-b", "a b", 'a"; DROP TABLE x; --', "s" * 64, "pg_store",
     "information_schema", "é", None, 3],
)  # fmt: skip
def test_invalid_schema_names_are_refused_before_any_sql(name, pg_url_or_none):
    with pytest.raises(StoreSchemaError, match="schema name"):
        validate_schema_name(name)
    if pg_url_or_none is not None and isinstance(name, str):
        with pytest.raises(StoreSchemaError, match="schema name"):
            SonaStore(pg_url_or_none, CONFIG, schema=name)


@pytest.fixture(scope="module")
def pg_url_or_none() -> Iterator[str | None]:
    if PG_ADMIN_URL is None:
        yield None
        return
    url = create_pg_database()
    try:
        yield url
        engine = sa.create_engine(url)
        with engine.connect() as conn:  # nothing was created for a refused name
            schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars().all()
        engine.dispose()
        assert not [s for s in schemas if s not in ("public", "information_schema")
                    and not s.startswith("pg_")]  # fmt: skip
    finally:
        drop_pg_database(url)


def test_sqlite_refuses_a_schema_with_a_clear_message(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(StoreSchemaError, match="on SQLite one file is one store"):
        SonaStore(url, CONFIG, schema="router_eu")
    assert not (tmp_path / "store.db").exists()
    code, _, err = run(capsys, "--url", url, "--schema", "router_eu", "stats")
    assert code == 1 and "one file is one store" in err
    code, _, err = run(capsys, "--url", url, "stores")
    assert code == 1 and "one store per file" in err


def test_the_default_store_keeps_its_lock_key_and_public_is_the_default_store(pg_url):
    assert cycle_lock_key(None) == cycle_lock_key("public") == CYCLE_LOCK_KEY
    assert len({cycle_lock_key(None), cycle_lock_key("a"), cycle_lock_key("b")}) == 3
    with SonaStore(pg_url, CONFIG) as default:
        default.record_trajectories(make_trajectories(12, 8))
        with SonaStore(pg_url, schema="public") as public:
            assert public.pending_count() == 12
            assert public.run_cycle(force=True).status == "completed"
        assert default.history()[0].status == "completed"
    tables = in_schema(pg_url, "public", "SELECT count(*) AS n FROM {s}.cycles")
    assert tables == [{"n": 1}]


# -- two stores in one database --------------------------------------------------------


@pytest.fixture
def two_stores(pg_url) -> Iterator[tuple[str, SonaStore, SonaStore]]:
    a = SonaStore(pg_url, CONFIG, schema="router_eu", head_refresh_seconds=0.0)
    b = SonaStore(pg_url, SonaConfig(hidden_dim=16, pattern_clusters=2), schema="router_us")
    try:
        yield pg_url, a, b
    finally:
        a.close()
        b.close()


@needs_pg
def test_two_stores_have_their_own_tables_cycles_and_rollbacks(two_stores):
    url, a, b = two_stores
    a.record_trajectories(make_trajectories(12, 8, seed=1))
    b.record_trajectories(make_trajectories(15, 16, seed=2))
    assert (a.pending_count(), b.pending_count()) == (12, 15)
    first_a = a.run_cycle(force=True)
    assert (a.pending_count(), b.pending_count()) == (0, 15)
    a.record_trajectories(make_trajectories(12, 8, seed=3))
    second_a = a.run_cycle(force=True)
    first_b = b.run_cycle(force=True)
    assert [c.cycle_id for c in a.history()] == [second_a.cycle_id, first_a.cycle_id]
    assert [c.cycle_id for c in b.history()] == [first_b.cycle_id]
    assert first_b.cycle_id == 1  # its own sequence

    a.rollback(second_a.cycle_id, reason="bad batch", actor="tester")
    assert a.head()["cycle_id"] == first_a.cycle_id
    assert b.head()["cycle_id"] == first_b.cycle_id
    assert [e["action"] for e in a.audit_log()] == ["rollback"]
    assert b.audit_log() == []
    assert b.config.hidden_dim == 16 and a.config.hidden_dim == 8

    # From outside: each schema holds its own rows, and nothing is in public.
    counts = {
        s: in_schema(url, s, "SELECT count(*) AS n FROM {s}.trajectories")[0]["n"]
        for s in ("router_eu", "router_us")
    }
    assert counts == {"router_eu": 24, "router_us": 15}
    with inspector(url) as engine:
        assert sa.inspect(engine).get_table_names(schema="public") == []


@needs_pg
def test_sql_views_and_functions_are_per_schema(two_stores):
    url, a, b = two_stores
    for store, seed in ((a, 1), (b, 2)):
        store.record_trajectories(make_trajectories(20, store.config.hidden_dim, seed=seed))
        store.run_cycle(force=True)
    for store, name in ((a, "router_eu"), (b, "router_us")):
        ids = sorted(p.id for p in store.patterns())
        # Through the store's engine (search_path) and qualified from outside.
        assert sorted(r["id"] for r in rows(store.engine, "SELECT id FROM current_patterns")) == ids
        outside = in_schema(url, name, "SELECT id, {s}.sona_vector_length(centroid) AS n "
                            "FROM {s}.current_patterns")  # fmt: skip
        assert sorted(r["id"] for r in outside) == ids
        assert {r["n"] for r in outside} == {store.config.embedding_dim}
        functions = in_schema(url, name, "SELECT p.proname FROM pg_proc p JOIN pg_namespace n "
                              "ON n.oid = p.pronamespace WHERE n.nspname = '{s}'")  # fmt: skip
        assert {r["proname"] for r in functions} == sql_doc.PG_FUNCTIONS
        views = in_schema(url, name, "SELECT table_name FROM information_schema.views "
                          "WHERE table_schema = '{s}'")  # fmt: skip
        assert {r["table_name"] for r in views} == sql_doc.VIEWS


@needs_pg
def test_every_documented_query_runs_in_a_schema_store(pg_url):
    with SonaStore(pg_url, sql_doc.CONFIG, schema="router_eu", actor="tester") as store:
        sql_doc.populate(store)
        for block_id, database, sql in sql_doc.SQL_BLOCKS:
            if database in (None, "postgresql"):
                with store.engine.connect() as connection:
                    assert connection.exec_driver_sql(sql).all(), block_id


@needs_pg
def test_a_cycle_lock_held_in_one_store_does_not_block_the_other(two_stores):
    url, a, b = two_stores
    a.record_trajectories(make_trajectories(12, 8, seed=1))
    b.record_trajectories(make_trajectories(12, 16, seed=2))
    with SonaStore(url, CONFIG) as default:
        default.record_trajectories(make_trajectories(12, 8, seed=3))
        # Store a's cycle lock, held in an open transaction (as a running cycle).
        with transaction(a.engine, immediate=True) as holding:
            assert acquire_cycle_lock(holding, wait=True)
            with pytest.raises(CycleInProgressError):
                run_cycle(a.engine, a.config, force=True, wait_for_lock=False)
            for other in (b, default):
                done = run_cycle(other.engine, other.config, force=True, wait_for_lock=False)
                assert done.status == "completed"
                assert other.pending_count() == 0
            assert a.pending_count() == 12
        assert a.run_cycle(force=True).status == "completed"


# -- migrations and the stores command --------------------------------------------------


def _previous_revision() -> str:
    script = ScriptDirectory.from_config(schema_module.alembic_config())
    return script.get_revision(script.get_current_head()).down_revision


@needs_pg
def test_db_upgrade_migrates_each_schema(pg_url, capsys):
    previous, head = _previous_revision(), schema_module.head_revision()
    engines = {s: create_store_engine(pg_url, schema=s) for s in ("router_eu", "router_us")}
    try:
        for engine in engines.values():
            schema_module.upgrade(engine, previous)
        with pytest.raises(SchemaVersionError, match="--schema router_eu db upgrade"):
            SonaStore(pg_url, schema="router_eu", create=False)

        code, out, err = run(capsys, "--url", pg_url, "stores", "--json")
        assert code == 0, err
        assert json.loads(out) == [
            {
                "schema": s,
                "revision": previous,
                "state": f"needs: sona-store db upgrade (to {head})",
            }
            for s in ("router_eu", "router_us")
        ]
        code, out, err = run(capsys, "--url", pg_url, "--schema", "router_eu", "db", "upgrade")
        assert code == 0, err
        assert "store 'router_eu'" in out and head in out
        revisions = {s: schema_module.database_revision(e) for s, e in engines.items()}
        assert revisions == {"router_eu": head, "router_us": previous}

        code, out, err = run(capsys, "--url", pg_url, "db", "upgrade", "--all-schemas")
        assert code == 0, err
        assert {s: schema_module.database_revision(e) for s, e in engines.items()} == {
            "router_eu": head,
            "router_us": head,
        }
        with inspector(pg_url) as engine:  # nothing in the default schema
            assert schema_module.database_revision(engine) is None
        code, out, _ = run(capsys, "--url", pg_url, "--schema", "router_us", "db", "current")
        assert "up to date" in out
    finally:
        for engine in engines.values():
            engine.dispose()


@needs_pg
def test_stores_lists_every_store_of_the_database(pg_url, capsys):
    for name in (None, "b_store", "a_store"):
        SonaStore(pg_url, CONFIG, schema=name).close()
    assert [s.schema for s in list_stores(create_store_engine(pg_url))] == [
        "a_store",
        "b_store",
        "public",
    ]
    code, out, _ = run(capsys, "--url", pg_url, "stores")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["schema", "revision", "state"]
    assert [line.split()[0] for line in lines[1:]] == ["a_store", "b_store", "public"]


# -- scheduled services ---------------------------------------------------------------------


@needs_pg
@pytest.mark.slow
def test_scheduled_services_of_two_stores_are_independent(two_stores, procs):
    url, a, b = two_stores
    a.record_trajectories(make_trajectories(12, 8, seed=1))
    b.record_trajectories(make_trajectories(12, 16, seed=2))
    scheduled = "SELECT count(*) FROM cycles WHERE scheduled_for IS NOT NULL"
    # Store a's lock is held the whole time its service runs: it must not get a
    # cycle, and store b's service must not notice.
    with transaction(a.engine, immediate=True) as holding:
        acquire_cycle_lock(holding, wait=True)
        service_a = procs.spawn(
            "a",
            [*_cli(), "--url", url, "--schema", "router_eu", "run", "--interval", "0.5"],
        )
        service_b = procs.spawn(
            "b", [*_cli(), "--url", url, "run", "--schema", "router_us", "--interval", "0.5"]
        )
        wait_for(lambda: scalar(b.engine, scheduled) >= 2, 120, "store b's scheduled cycles")
        wait_for(lambda: "lost the race" in procs.log(service_a), 120, "a's busy attempt")
        assert scalar(a.engine, scheduled) == 0
    wait_for(lambda: scalar(a.engine, scheduled) >= 1, 120, "store a's scheduled cycle")
    for service in (service_a, service_b):
        assert procs.terminate(service) == 0, procs.log(service)
    assert a.pending_count() == 0 and b.pending_count() == 0
    with inspector(url) as engine:
        assert sa.inspect(engine).get_table_names(schema="public") == []


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "sona_store.cli.main"]


@needs_pg
def test_schema_from_the_environment_and_a_mismatched_engine(pg_url, capsys, monkeypatch):
    with SonaStore(pg_url, CONFIG, schema="router_eu") as store:
        store.record_trajectories(make_trajectories(3, 8))
    monkeypatch.setenv("SONA_STORE_SCHEMA", "router_eu")
    code, out, err = run(capsys, "--url", pg_url, "stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["schema"], stats["trajectories_recorded"]) == ("router_eu", 3)
    engine = create_store_engine(pg_url, schema="router_us")
    try:
        with pytest.raises(StoreSchemaError, match="created for schema 'router_us'"):
            SonaStore(pg_url, schema="router_eu", engine=engine)
    finally:
        engine.dispose()
