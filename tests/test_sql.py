"""The SQL surface (migration 0002_sql_views, docs/sql.md): every query and Python
example in the document runs on SQLite and PostgreSQL against a populated store;
the views agree with the API; the SQL functions agree with numpy."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db import schema
from sona_store.db.engine import create_store_engine
from sona_store.db.sqlfunctions import sona_cosine
from sona_store.errors import SchemaVersionError

from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from .helpers import make_trajectories

DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
VIEWS = {"current_patterns", "pattern_history", "cycle_audit", "current_pattern_routes"}
PG_FUNCTIONS = {"sona_vector", "sona_vector_length", "sona_bytes", "sona_cosine"}
CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=4)
BACKENDS = ["sqlite", "postgresql"]


# -- the document ------------------------------------------------------------------


def doc_blocks(language: str) -> list[tuple[str, str | None, str]]:
    """(id, database or None for both, code) of every fenced block in `language`."""
    pattern = re.compile(rf"^```{language}(?: (\w+))?\n(.*?)^```", re.M | re.S)
    text = DOC.read_text()
    blocks = []
    for match in pattern.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        database = match.group(1)
        blocks.append((f"sql.md:{line}-{database or 'both'}", database, match.group(2)))
    return blocks


SQL_BLOCKS = doc_blocks("sql")
PYTHON_BLOCKS = doc_blocks("python")


def test_the_document_has_the_worked_queries():
    assert len(SQL_BLOCKS) >= 15
    assert {database for _, database, _ in SQL_BLOCKS} == {None, "postgresql", "sqlite"}
    for _, database, _ in SQL_BLOCKS:
        assert database in (None, "postgresql", "sqlite")
    portable = " ".join(code for _, database, code in SQL_BLOCKS if database is None)
    for needle in ("age_days <= 7", "sona_cosine", "audit_log", "consumed_by_cycle_id IS NULL"):
        assert needle in portable
    for view in VIEWS:
        assert view in portable


def test_the_document_describes_every_table_view_and_column(tmp_path):
    text = DOC.read_text()
    engine = create_store_engine(f"sqlite:///{tmp_path / 'doc.db'}")
    try:
        schema.upgrade(engine)
        inspector = sa.inspect(engine)
        names = inspector.get_table_names() + inspector.get_view_names()
        assert set(inspector.get_view_names()) >= VIEWS
        for name in names:
            assert f"`{name}`" in text, name
            for column in inspector.get_columns(name):
                assert f"`{column['name']}`" in text, f"{name}.{column['name']}"
    finally:
        engine.dispose()


# -- a populated store on each backend ---------------------------------------------


def routed(n: int, seed: int) -> list[dict[str, Any]]:
    """make_trajectories with model routes: small, large and none in turn."""
    items = make_trajectories(n, 8, seed=seed)
    for i, item in enumerate(items):
        item["model_route"] = ("small", "large", None)[i % 3]
    return items


def populate(store: SonaStore) -> None:
    """Cycles 1-2, cycle 3 rolled back, cycles 4-5, a skipped cycle 6, cycle 5
    rolled back with its trajectories requeued, more pending trajectories, a
    quarantined batch, pattern accesses, one pruned pattern and a micro-LoRA
    flush. Trajectories carry routes (small, large, none)."""
    for seed in range(3):
        store.record_trajectories(routed(12, seed))
        store.run_cycle(force=True)
    store.rollback(3, reason="bad batch", actor="tester")
    for seed in (3, 4):
        store.record_trajectories(routed(12, seed))
        store.run_cycle(force=True)
    assert store.run_cycle().status == "skipped"
    store.rollback(5, requeue=True, reason="regression", actor="tester")
    store.record_trajectories(make_trajectories(5, 8, seed=5))
    broken = make_trajectories(4, 8, seed=7)
    for item in broken:
        item["model_route"] = "broken-client"
    store.record_trajectories(broken)
    store.quarantine(model_route="broken-client", reason="broken client", actor="tester")
    for query in make_trajectories(3, 8, seed=6):
        store.find_patterns(query["query_embedding"], k=2)
    worst = min(p.avg_quality for p in store.patterns())
    assert store.prune_patterns(worst + 1e-6, 10**6, -1.0) == 1
    store.flush()


@pytest.fixture(scope="module", params=BACKENDS)
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, SonaStore, Path]]:
    """(backend, store, folder). On SQLite the database is `sona.db` in the folder,
    as in the document's examples. Tests must not change it."""
    folder = tmp_path_factory.mktemp(f"sql_{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'sona.db'}"
    elif PG_ADMIN_URL is None:
        pytest.skip("no PostgreSQL configured (set SONA_STORE_TEST_PG)")
    else:
        url = create_pg_database()
    store = SonaStore(url, CONFIG, actor="tester", head_refresh_seconds=0.0)
    try:
        populate(store)
        yield request.param, store, folder
    finally:
        store.close()
        if request.param == "postgresql":
            drop_pg_database(url)


def query(store: SonaStore, sql: str, params: dict[str, Any] | None = None) -> list[sa.Row]:
    with store.engine.connect() as connection:
        return connection.execute(sa.text(sql), params or {}).all()


@pytest.mark.parametrize(
    ("database", "sql"),
    [pytest.param(database, code, id=block_id) for block_id, database, code in SQL_BLOCKS],
)
def test_documented_query_runs_and_returns_rows(populated, database, sql):
    backend, store, _ = populated
    if database not in (None, backend):
        pytest.skip(f"a {database} query")
    assert ";" not in sql.strip().rstrip(";"), "one statement a block"
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql(sql).all()
    assert rows, sql


@pytest.mark.parametrize(
    ("database", "code"),
    [pytest.param(database, code, id=block_id) for block_id, database, code in PYTHON_BLOCKS],
)
def test_documented_python_runs(populated, database, code, monkeypatch, capsys):
    backend, store, folder = populated
    if database not in (None, backend):
        pytest.skip(f"a {database} example")
    monkeypatch.chdir(folder)
    exec(compile(code, "docs/sql.md", "exec"), {"store": store})
    assert capsys.readouterr().out.strip()


def test_view_queries_run_without_the_functions(populated):
    """The views call no sona_* function: a plain sqlite3 connection (as the
    `sqlite3` shell) reads them, and every documented query that uses no
    function runs there too."""
    backend, _, folder = populated
    if backend != "sqlite":
        pytest.skip("a SQLite property")
    connection = sqlite3.connect(folder / "sona.db")
    try:
        for view in VIEWS:
            assert connection.execute(f"SELECT * FROM {view}").fetchall()
        for _, database, sql in SQL_BLOCKS:
            if database in (None, "sqlite") and "sona_" not in sql:
                assert connection.execute(sql).fetchall(), sql
    finally:
        connection.close()


# -- the views ------------------------------------------------------------------------


def test_views_exist_after_a_store_opens(db_url):
    SonaStore(db_url, CONFIG).close()
    engine = create_store_engine(db_url)
    try:
        assert set(sa.inspect(engine).get_view_names()) >= VIEWS
        with engine.connect() as connection:
            for view in VIEWS:
                assert connection.execute(sa.text(f"SELECT * FROM {view}")).all() == []
    finally:
        engine.dispose()


def test_current_patterns_are_the_stores_patterns(populated):
    _, store, _ = populated
    ids = [row.id for row in query(store, "SELECT id FROM current_patterns ORDER BY id")]
    assert ids == [p.id for p in store.patterns()]
    assert ids
    flagged = query(store, "SELECT id FROM pattern_history WHERE is_current ORDER BY id")
    assert [row.id for row in flagged] == ids
    rows = query(store, "SELECT * FROM current_patterns ORDER BY id")
    for row, pattern in zip(rows, store.patterns(), strict=True):
        assert row.cycle_id == store.head()["cycle_id"]
        assert np.frombuffer(bytes(row.centroid), "<f4").tobytes() == pattern.centroid.tobytes()
        assert row.avg_quality == pattern.avg_quality
        assert row.access_count == pattern.access_count
        assert 0 <= row.age_days < 1


def test_current_pattern_routes_are_the_stores(populated):
    _, store, _ = populated
    rows = query(
        store,
        "SELECT pattern_id, model_route, trajectory_count, mean_quality,"
        " sum_squared_deviations, cycle_id FROM current_pattern_routes",
    )
    key = lambda r: (r[0], r[1] or "")  # noqa: E731
    api = sorted(
        (
            (
                r["pattern_id"],
                r["model_route"],
                r["trajectory_count"],
                r["mean_quality"],
                r["sum_squared_deviations"],
            )
            for r in store.pattern_routes()
        ),
        key=key,
    )
    assert sorted((tuple(r[:5]) for r in rows), key=key) == api
    assert {r.cycle_id for r in rows} == {store.head()["cycle_id"]}
    served = {p.id for p in store.patterns()}
    assert {r[0] for r in rows} == served  # every served pattern, none pruned
    assert {r[1] for r in rows} == {"small", "large", None}


def test_pattern_history_and_cycle_audit(populated):
    _, store, _ = populated
    history = query(store, "SELECT * FROM pattern_history ORDER BY id")
    assert len(history) == store.stats()["patterns_learned"]
    statuses = {c.cycle_id: c.status for c in store.history()}
    assert {row.cycle_id: row.cycle_status for row in history} == {
        cycle_id: status for cycle_id, status in statuses.items() if status != "skipped"
    }
    assert {row.cycle_status for row in history} == {"completed", "rolled_back"}
    assert sum(row.pruned_at is not None for row in history) == 1

    timeline = query(store, "SELECT * FROM cycle_audit ORDER BY at")
    assert [(row.event, row.cycle_id) for row in timeline] == [
        ("cycle", 1),
        ("cycle", 2),
        ("cycle", 3),
        ("rollback", 3),
        ("cycle", 4),
        ("cycle", 5),
        ("cycle", 6),
        ("rollback", 5),
        ("quarantine", None),
    ]
    rollback = timeline[-2]
    assert (rollback.from_cycle_id, rollback.to_cycle_id) == (5, 4)
    assert rollback.actor == "tester" and rollback.reason == "regression"
    assert rollback.audit_id == store.audit_log()[1]["id"]
    quarantine = timeline[-1]
    assert (quarantine.actor, quarantine.reason) == ("tester", "broken client")
    assert quarantine.audit_id == store.audit_log()[0]["id"]
    details = (
        rollback.details if isinstance(rollback.details, dict) else json.loads(rollback.details)
    )
    assert details["cycles_rolled_back"] == [5] and details["trajectories_requeued"] == 12
    skipped = timeline[-3]
    assert (skipped.status, skipped.trigger) == ("skipped", "manual")
    assert skipped.reason and skipped.audit_id is None


# -- the functions --------------------------------------------------------------------


def float32_samples() -> np.ndarray:
    """Random bit patterns (every exponent, denormals included) and edge values."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view("<f4")
    info = np.finfo(np.float32)
    edges = [0.0, -0.0, 1.0, -1.0, 0.1, -2.5, 1e-45, -1e-45, info.tiny, -info.tiny, info.max]
    edges += [-info.max, info.eps, 3.0e-39, 123456.78, -1e30]
    values = np.concatenate([np.array(edges, dtype="<f4"), bits])
    return values[np.isfinite(values)]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    SonaStore(db_url, CONFIG).close()
    e = create_store_engine(db_url)
    try:
        yield e
    finally:
        e.dispose()


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.text(sql), params).scalar_one()


def as_float32(value: Any) -> np.ndarray:
    """sona_vector's result as float32: a real[] list on PostgreSQL, JSON on SQLite."""
    values = json.loads(value) if isinstance(value, str) else value
    return np.array(values, dtype="<f4")


def test_sona_vector_round_trips_exactly(engine):
    values = float32_samples()
    data = values.tobytes()
    decoded = as_float32(scalar(engine, "SELECT sona_vector(:v)", v=data))
    assert decoded.tobytes() == data  # bit for bit: -0.0 and denormals included
    assert bytes(scalar(engine, "SELECT sona_bytes(sona_vector(:v))", v=data)) == data
    assert scalar(engine, "SELECT sona_vector_length(:v)", v=data) == len(values)
    for small in (np.zeros(0, "<f4"), np.array([-0.0], "<f4"), np.array([1e-45], "<f4")):
        result = as_float32(scalar(engine, "SELECT sona_vector(:v)", v=small.tobytes()))
        assert result.tobytes() == small.tobytes()
    assert scalar(engine, "SELECT sona_vector(NULL)") is None
    assert scalar(engine, "SELECT sona_vector_length(NULL)") is None


def test_sona_vector_on_postgresql_is_real_array(db_url, engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's array type")
    assert scalar(engine, "SELECT pg_typeof(sona_vector(:v))::text", v=b"\0\0\0\0") == "real[]"
    assert scalar(engine, "SELECT (sona_vector(sona_bytes('{0.5,-1.25,3}')))[2]") == -1.25
    data = np.array([0.5, -1.25, 3], "<f4").tobytes()
    assert bytes(scalar(engine, "SELECT sona_bytes(ARRAY[0.5, -1.25, 3]::real[])")) == data
    assert scalar(engine, "SELECT sona_bytes(ARRAY[1, NULL]::real[])") is None
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT p.proname, p.provolatile FROM pg_proc AS p WHERE p.proname LIKE 'sona\\_%'"
            )
        ).all()
    assert {row.proname for row in rows} == PG_FUNCTIONS
    assert {row.provolatile for row in rows} == {"i"}  # IMMUTABLE


def test_sona_bytes_takes_json_text_on_both(engine):
    data = np.array([0.5, -1.25, 3, 0.1], "<f4").tobytes()
    assert bytes(scalar(engine, "SELECT sona_bytes('[0.5, -1.25, 3, 0.1]')")) == data
    assert bytes(scalar(engine, "SELECT sona_bytes('[]')")) == b""
    assert scalar(engine, "SELECT sona_bytes(NULL)") is None


def test_sona_cosine_matches_numpy_on_both(engine):
    rng = np.random.default_rng(3)
    pairs = [(rng.normal(size=256), rng.normal(size=256)) for _ in range(5)]
    pairs += [
        (rng.uniform(-1, 1, 8), rng.uniform(-1, 1, 8)),
        (np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0, -3.0])),
        (np.array([1e-30, 0.0]), np.array([1.0, 1.0])),  # norm under 1e-8
        (np.zeros(4), np.zeros(4)),
        (np.ones(3), np.ones(4)),  # lengths differ
        (np.zeros(0), np.zeros(0)),
    ]
    for a, b in pairs:
        x, y = a.astype("<f4"), b.astype("<f4")
        xd, yd = x.astype(np.float64), y.astype(np.float64)
        if len(x) != len(y) or np.linalg.norm(xd) < 1e-8 or np.linalg.norm(yd) < 1e-8:
            expected = 0.0
        else:
            expected = float(xd @ yd / (np.linalg.norm(xd) * np.linalg.norm(yd)))
        got = scalar(engine, "SELECT sona_cosine(:a, :b)", a=x.tobytes(), b=y.tobytes())
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert sona_cosine(x.tobytes(), y.tobytes()) == pytest.approx(expected, rel=1e-12)
    assert scalar(engine, "SELECT sona_cosine(NULL, :b)", b=b"\0\0\x80?") is None
    assert scalar(engine, "SELECT sona_cosine(:a, NULL)", a=b"\0\0\x80?") is None


def test_sql_nearest_pattern_is_find_patterns_first(populated):
    _, store, _ = populated
    q = np.random.default_rng(11).uniform(-1, 1, 8).astype("<f4")
    rows = query(
        store,
        "SELECT id, sona_cosine(centroid, :q) AS similarity FROM current_patterns "
        "ORDER BY similarity DESC",
        {"q": q.tobytes()},
    )
    best = max(store.patterns(), key=lambda p: p.similarity(q))
    assert rows[0].id == best.id
    assert rows[0].similarity == pytest.approx(best.similarity(q), rel=1e-6)


# -- the migration --------------------------------------------------------------------


def view_and_function_names(engine: sa.Engine) -> set[str]:
    names = set(sa.inspect(engine).get_view_names())
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            names |= set(
                connection.execute(
                    sa.text("SELECT proname FROM pg_proc WHERE proname LIKE 'sona\\_%'")
                ).scalars()
            )
    return names


def test_a_database_at_0001_is_refused_then_upgraded_with_its_data(db_url):
    engine = create_store_engine(db_url)
    try:
        schema.upgrade(engine, "0001_initial")
        assert view_and_function_names(engine) == set()
        for create in (True, False):
            with pytest.raises(SchemaVersionError) as info:
                SonaStore(db_url, CONFIG, create=create)
            message = str(info.value)
            assert "0001_initial" in message and "sona-store" in message
            assert "db upgrade" in message
        schema.upgrade(engine, "0002_sql_views")
        assert schema.database_revision(engine) == "0002_sql_views"
        views_0002 = VIEWS - {"current_pattern_routes"}  # 0005's
        expected = views_0002 | (PG_FUNCTIONS if engine.dialect.name == "postgresql" else set())
        assert view_and_function_names(engine) == expected
    finally:
        engine.dispose()


def test_downgrade_to_0001_drops_views_and_functions_and_keeps_data(db_url):
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(12, 8))
        store.run_cycle(force=True)
        patterns = [p.id for p in store.patterns()]
    finally:
        store.close()
    engine = create_store_engine(db_url)
    try:
        schema.downgrade(engine, "0001_initial")
        assert view_and_function_names(engine) == set()
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM patterns")).scalar_one() == (
                len(patterns)
            )
        schema.upgrade(engine)
    finally:
        engine.dispose()
    store = SonaStore(db_url, CONFIG, create=False)
    try:
        assert [row.id for row in query(store, "SELECT id FROM current_patterns ORDER BY id")] == (
            patterns
        )
    finally:
        store.close()
