"""Fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from SONA_STORE_TEST_PG (an admin URL, e.g.
postgresql://postgres@127.0.0.1:5432/postgres); unset, the local server on
127.0.0.1:5432 is used when it answers. Each test gets a database of its own,
created with a unique name and dropped afterwards. PostgreSQL tests skip only
when no server is configured or answering; `.ci/run` always provides one.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sona_store import SonaConfig, SonaStore

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str | None:
    configured = os.environ.get("SONA_STORE_TEST_PG")
    if configured:
        return configured
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return DEFAULT_PG
    except OSError:
        return None


PG_ADMIN_URL = _pg_admin_url()


def _driver_url(url: str) -> sa.URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_pg_database(admin_url: str | None = None) -> str:
    """Create a uniquely named database; returns its URL."""
    admin = _driver_url(admin_url or PG_ADMIN_URL)
    name = f"sona_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str, admin_url: str | None = None) -> None:
    admin = _driver_url(admin_url or PG_ADMIN_URL)
    name = make_url(url).database
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if PG_ADMIN_URL is None:
        pytest.skip("no PostgreSQL configured (set SONA_STORE_TEST_PG)")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def small_config() -> SonaConfig:
    return SonaConfig(hidden_dim=8, pattern_clusters=4)


@pytest.fixture
def store(db_url: str, small_config: SonaConfig) -> Iterator[SonaStore]:
    s = SonaStore(db_url, small_config)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """Service and writer subprocesses of one test, all stopped at its end."""
    from .service_helpers import Processes

    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.cleanup()


@pytest.fixture
def private_pg() -> Iterator[Any]:
    """A private PostgreSQL server this test may stop and start (never the shared one)."""
    from . import pgserver

    reason = pgserver.available()
    if reason:
        pytest.skip(f"cannot start a private PostgreSQL: {reason}")
    server = pgserver.PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
