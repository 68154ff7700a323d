"""Issue 14, point 3: failures are classified by what the database reported
(SQLSTATE, SQLite's result code), each provoked for real on both backends,
and the CLI prints a SonaStoreError as one line but lets a bug raise."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import sona_store.db.engine as engine_module
from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main
from sona_store.db import state
from sona_store.db.engine import create_store_engine, transaction
from sona_store.db.models import StoreHead
from sona_store.db.types import utcnow
from sona_store.errors import (
    AdapterError,
    DatabaseBusyError,
    DatabaseUnavailableError,
    FileAccessError,
    InvalidInputError,
    LoraVersionNotFoundError,
    NotFoundError,
    SonaStoreError,
    TransactionConflictError,
)
from sona_store.services.cycle import GivenSlot, SlotTakenError, run_cycle

from .helpers import make_trajectories
from .test_cli import assert_one_line_error, run

CONFIG = SonaConfig(hidden_dim=8)


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_path(url: str) -> str:
    database = make_url(url).database
    assert database is not None
    return database


def _audit_rows(url: str) -> int:
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one())
    finally:
        engine.dispose()


def test_a_lock_not_granted_in_time_is_database_busy(db_url, monkeypatch):
    """Another transaction holds the head (PostgreSQL: its row, with the
    session's lock_timeout at 200 ms, SQLSTATE 55P03; SQLite: the write lock,
    with a 200 ms busy timeout, SQLITE_BUSY): moving the LoRA head fails with
    DatabaseBusyError and writes nothing."""
    if _is_sqlite(db_url):
        monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_S", 0.2)
        store = SonaStore(db_url, CONFIG)
    else:
        options = {"connect_args": {"options": "-c lock_timeout=200"}}
        store = SonaStore(db_url, CONFIG, engine_options=options)
    micro = store.head()["micro_lora_version_id"]
    audits = _audit_rows(db_url)
    if _is_sqlite(db_url):
        blocker = sqlite3.connect(_sqlite_path(db_url), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        release = blocker.close
    else:
        holder = create_store_engine(db_url).connect()
        holder.begin()
        holder.execute(sa.text("SELECT id FROM store_head FOR UPDATE"))
        release = holder.close
    try:
        with pytest.raises(DatabaseBusyError, match="did not grant a lock in time") as caught:
            store.use_lora_version(micro, "blocked")
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
    finally:
        release()
    assert _audit_rows(db_url) == audits
    store.close()


def test_a_conflict_with_a_concurrent_transaction_is_a_transaction_conflict(db_url):
    """A transaction read the head, another changed it and committed, then
    the first writes it: PostgreSQL under REPEATABLE READ refuses with
    SQLSTATE 40001, SQLite (WAL) with SQLITE_BUSY_SNAPSHOT. Either way it is
    TransactionConflictError, and the first transaction's write is not kept."""
    store = SonaStore(db_url, CONFIG)
    store.close()
    if _is_sqlite(db_url):
        engine = create_store_engine(db_url)
    else:
        engine = create_store_engine(db_url, isolation_level="REPEATABLE READ")
    other = create_store_engine(db_url)
    try:
        with (
            pytest.raises(TransactionConflictError, match="conflicted"),
            transaction(engine) as session,
        ):
            head = state.get_head(session)  # the snapshot this transaction sees
            with other.begin() as connection:
                # A real change: SQLite skips writing a row whose new content
                # equals the old, and such a commit would not conflict.
                connection.execute(sa.update(StoreHead).values(updated_at=utcnow()))
            state.move_head(session, head, micro_lora_version_id=head.base_lora_version_id)
        with other.connect() as connection:
            micro, base = connection.execute(
                sa.text("SELECT micro_lora_version_id, base_lora_version_id FROM store_head")
            ).one()
        assert micro != base
    finally:
        engine.dispose()
        other.dispose()


def _unreachable(url: str, tmp_path: Path) -> str:
    if _is_sqlite(url):
        return f"sqlite:///{tmp_path / 'missing-dir' / 'store.db'}"
    with __import__("socket").socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return make_url(url).set(port=port).render_as_string(hide_password=False)


def test_a_database_that_cannot_be_reached_is_unavailable(db_url, tmp_path):
    """SQLite cannot open the file (SQLITE_CANTOPEN); PostgreSQL refuses the
    connection (psycopg's OperationalError with no SQLSTATE: nothing answered)."""
    with pytest.raises(DatabaseUnavailableError, match="is unavailable"):
        SonaStore(_unreachable(db_url, tmp_path), CONFIG)


def test_a_connection_killed_mid_transaction_is_unavailable(db_url):
    """The server ends the session inside a transaction (pg_terminate_backend:
    SQLSTATE 57P01, admin_shutdown, and a connection SQLAlchemy invalidates)."""
    if _is_sqlite(db_url):
        pytest.skip("SQLite has no server to end a session")
    store = SonaStore(db_url, CONFIG)
    killer = create_store_engine(db_url)
    try:
        with pytest.raises(DatabaseUnavailableError), transaction(store.engine) as session:
            pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with killer.connect() as connection:
                connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            session.execute(sa.text("SELECT 1"))
        assert store.head()["cycle_id"] is None  # the pool gives a fresh connection
    finally:
        killer.dispose()
        store.close()


def test_a_slot_the_unique_key_refuses_is_slot_taken(db_url, monkeypatch):
    """Should a writer claim a slot without the check under the lock, the
    unique `scheduled_for` key refuses the second cycle (SQLSTATE 23505,
    SQLITE_CONSTRAINT_UNIQUE) and the attempt is SlotTakenError, not a failed
    cycle: the database says the slot has a cycle, whatever its wording."""
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(4, 8))
        slot = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        run_cycle(store.engine, store.config, force=True, trigger="scheduled", scheduled_for=slot)
        monkeypatch.setattr(GivenSlot, "choose_slot", lambda self, session, now: self.slot)
        with pytest.raises(SlotTakenError) as caught:
            run_cycle(store.engine, store.config, scheduled_for=slot)
        assert isinstance(caught.value.__cause__, sa.exc.IntegrityError)
        assert [r.status for r in store.history()] == ["completed"]  # no failed record
    finally:
        store.close()


def test_every_error_class_is_still_the_built_in_it_replaces():
    """Code written against the built-ins keeps catching them."""
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(AdapterError, ValueError)
    assert issubclass(NotFoundError, LookupError)
    assert issubclass(LoraVersionNotFoundError, LookupError)
    assert issubclass(FileAccessError, OSError)
    for cls in (DatabaseBusyError, DatabaseUnavailableError, TransactionConflictError):
        assert issubclass(cls, SonaStoreError)


def test_an_unknown_lora_version_and_an_unwritable_folder_are_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    SonaStore(url, CONFIG).close()
    code, _, err = run(capsys, "--url", url, "lora-use", "999", "--reason", "r")
    assert_one_line_error(code, err, "no LoRA version 999")
    pytest.importorskip("safetensors")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    code, _, err = run(capsys, "--url", url, "export-lora", str(blocked / "out"))
    assert_one_line_error(code, err, str(blocked / "out"))


def test_an_internal_bug_is_not_swallowed_by_the_cli(tmp_path, monkeypatch, capsys):
    """A KeyError (a LookupError) from inside the library is a bug, not a user
    error: the CLI lets it raise with its traceback instead of one line."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    SonaStore(url, CONFIG).close()

    def broken(self: SonaStore) -> dict[str, object]:
        raise KeyError("a key the code forgot")

    monkeypatch.setattr(SonaStore, "stats", broken)
    with pytest.raises(KeyError, match="a key the code forgot"):
        main(["--url", url, "stats"])
    assert "sona-store: error" not in capsys.readouterr().err
