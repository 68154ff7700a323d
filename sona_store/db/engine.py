"""Engines and transactions, with per-dialect settings in one place.

SQLite: WAL (readers do not block the writer), foreign keys on, a busy timeout,
and transactions begun by us (pysqlite's own BEGIN handling defers it until the
first write, which would break a cycle's read-then-write snapshot). A write
transaction that must not interleave with another starts as BEGIN IMMEDIATE.
PostgreSQL: pre-ping so a restarted server is survived, and a connect timeout;
with a store schema (`db.stores`), every connection's search_path is that schema.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from sona_store.config import DEFAULT_URL, URL_ENV
from sona_store.db.driver import Driver
from sona_store.db.failures import classify, is_sqlite_busy
from sona_store.db.stores import refuse_on_sqlite, validate_schema_name
from sona_store.errors import (
    ConfigError,
    DatabaseBusyError,
    DatabaseUnavailableError,
    StoreSchemaError,
    TransactionConflictError,
)
from sona_store.files import create_private_file

logger = logging.getLogger("sona_store")

SQLITE_BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5
IMMEDIATE = "sona_immediate"  # execution option: take the write lock at BEGIN
SCHEMA = "sona_schema"  # engine-wide execution option: the store's schema, if any
DURABILITY = "sona_durability"  # engine-wide execution option: "normal" or "full"
DURABILITY_LEVELS = ("normal", "full")
CONFIGURED = "sona_configured"  # engine-wide execution option: set up by `configure_engine`


def store_label(engine: Engine) -> str:
    """How messages name a store: its masked URL, and its schema if it has one."""
    schema = engine_schema(engine)
    where = f"database {mask_url(engine.url)}"
    return f"store {schema!r} in {where}" if schema else where


def mask_url(url: str | URL) -> str:
    """The URL as it may appear in logs and messages: password replaced by ***."""
    try:
        parsed = make_url(url)
        if "password" in parsed.query:  # libpq also takes ?password=...
            parsed = parsed.update_query_dict({"password": "***"})
        return parsed.render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown without anything after '//'
        text = str(url)
        return text.split("//", 1)[0] + "//***" if "//" in text else "***"


def resolve_url(url: str | URL | None = None) -> str | URL:
    """The store's URL: `url` if given, else $SONA_STORE_URL, else the SQLite
    default. The one place the library and the CLI decide it."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


# Drivers other tools put in PostgreSQL URLs (MLflow, Optuna: psycopg2). The
# store is written and tested for psycopg 3, which reads the same URLs.
_PSYCOPG3_ALIASES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}


def normalise_url(url: str | URL) -> URL:
    """Accept `postgresql://`, `postgres://` and `postgresql+psycopg2://` URLs and
    use psycopg 3 for them; another PostgreSQL driver is a one-line error."""
    parsed = make_url(url)
    if parsed.drivername in _PSYCOPG3_ALIASES:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        raise ConfigError(
            f"driver {parsed.drivername!r} is not supported: sona_store uses psycopg 3; "
            f"write {mask_url(parsed.set(drivername='postgresql'))}"
        )
    return parsed


def _require_psycopg() -> None:
    try:
        importlib.import_module("psycopg")
    except ImportError:
        raise ConfigError(
            "PostgreSQL URLs need psycopg 3, which is not installed: "
            "pip install 'sona-store[postgres]'"
        ) from None


def create_store_engine(
    url: str | URL, *, schema: str | None = None, durability: str = "normal", **options: Any
) -> Engine:
    """An engine for the store at `url` (PostgreSQL: in `schema`, if given);
    `options` go to `sqlalchemy.create_engine` (`connect_args` are merged
    with the store's own). `durability` (SQLite): "normal" commits survive
    the process being killed; "full" also a power loss (SQLite's
    synchronous=FULL: the log is synced at every commit). PostgreSQL commits
    are as durable as the server's `synchronous_commit` makes them, either way."""
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    refuse_on_sqlite(schema, backend)
    if backend == "sqlite":
        connect_args = {
            "timeout": SQLITE_BUSY_TIMEOUT_S,
            "check_same_thread": False,
            **options.pop("connect_args", {}),
        }
        engine = sa.create_engine(parsed, connect_args=connect_args, **options)
        if not _in_memory(parsed) and not connect_args.get("uri"):
            event.listen(engine, "do_connect", _private_file)
    else:
        _require_psycopg()
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, **options.pop("connect_args", {})}
        engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **options)
    return configure_engine(engine, schema=schema, durability=durability)


def configure_engine(
    engine: Engine, *, schema: str | None = None, durability: str = "normal"
) -> Engine:
    """Give an engine the store's per-dialect settings (module docstring), in
    place, and return it: every connection it makes, and every one it pooled
    before, is set up on checkout. An engine configured before keeps its
    settings, and must be for the same `schema`. Only SQLite (pysqlite) and
    PostgreSQL (psycopg 3) engines are accepted: the store's fast paths use
    those drivers' cursors."""
    if engine.get_execution_options().get(CONFIGURED):
        if engine_schema(engine) != schema:
            raise StoreSchemaError(
                f"schema={schema!r} but the engine was created for schema "
                f"{engine_schema(engine)!r}: pass create_store_engine(url, schema=...)"
            )
        if engine_durability(engine) != durability:
            raise ConfigError(
                f"durability={durability!r} but the engine was created with "
                f"{engine_durability(engine)!r}: pass create_store_engine(url, durability=...)"
            )
        return engine
    if durability not in DURABILITY_LEVELS:
        raise ConfigError(f"durability must be 'normal' or 'full', got {durability!r}")
    backend, driver = engine.dialect.name, engine.dialect.driver
    if (backend, driver) not in (("sqlite", "pysqlite"), ("postgresql", "psycopg")):
        raise ConfigError(
            f"engine for {mask_url(engine.url)} uses {backend}+{driver}: sona_store needs "
            "sqlite (pysqlite) or postgresql+psycopg (psycopg 3)"
        )
    refuse_on_sqlite(schema, backend)
    engine.update_execution_options(**{DURABILITY: durability})
    if schema is not None:
        engine.update_execution_options(**{SCHEMA: validate_schema_name(schema)})
    if backend == "sqlite":
        _configure_sqlite(engine, durability)
    elif schema is not None:
        _use_schema(engine, schema)
    engine.update_execution_options(**{CONFIGURED: True})
    return engine


def engine_durability(engine: Engine | Connection) -> str:
    """The durability an engine was created with ("normal" unless told)."""
    return str(engine.get_execution_options().get(DURABILITY, "normal"))


def engine_schema(engine: Engine | Connection) -> str | None:
    """The store schema an engine (or a connection of it) was created for."""
    return engine.get_execution_options().get(SCHEMA)


def _on_each_connection(
    engine: Engine, setup: Callable[[Any], None], key: str, *, first: bool = False
) -> None:
    """Run `setup` once on every DBAPI connection of `engine`: as it connects
    (`first`: before the dialect's own first-connect set-up), and on checkout
    for one the pool held before the engine was configured."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        setup(dbapi_connection)
        record.info[key] = True

    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if not record.info.get(key):
            on_connect(dbapi_connection, record)

    event.listen(engine, "connect", on_connect, insert=first)
    event.listen(engine, "checkout", on_checkout)


def _use_schema(engine: Engine, schema: str) -> None:
    """Every connection searches `schema` only. Before the dialect's
    first-connect set-up, which reads current_schema() as its default. The
    name is bound as a value (set_config), quoted as an identifier."""
    path = engine.dialect.identifier_preparer.quote_identifier(schema)

    def search_path(dbapi_connection: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # a session-level setting, kept by the pool
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT set_config('search_path', %s, false)", (path,))
        finally:
            dbapi_connection.autocommit = autocommit

    _on_each_connection(engine, search_path, "sona_search_path", first=True)

    @event.listens_for(engine, "connect")
    def _after_connect(_dbapi_connection: Any, _record: Any) -> None:
        # After the dialect's set-up: a schema made after the first connection
        # (by `db upgrade`) is still the default that reflection looks in.
        engine.dialect.default_schema_name = schema

    # An engine that connected before it was configured ran that set-up already.
    engine.dialect.default_schema_name = schema


SQLITE_PAGE_SIZE = 16384
# SQLite checkpoints in the committing connection once the log holds this many
# pages (64 MiB of 16 KiB pages; SQLite's default is 1000). The store's
# checkpoint thread copies the log whenever writing pauses, so this only
# bounds the log under writing that never does (see `checkpoint`).
SQLITE_AUTOCHECKPOINT_PAGES = 4096


def _in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _private_file(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> None:
    """A new store is created 0600 before SQLite opens it (its -wal and -shm
    then get the same mode): trajectories are nobody else's."""
    path = cparams.get("database", cargs[0] if cargs else None)
    if isinstance(path, str) and path and not path.startswith("file:"):
        create_private_file(path)


def _configure_sqlite(engine: Engine, durability: str) -> None:
    in_memory = _in_memory(engine.url)

    def pragmas(dbapi_connection: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # A savepoint (every micro-LoRA flush has one) copies each page it first
        # changes to a statement journal: in a temporary file by default, a
        # file write per flush; in memory, a memcpy.
        cursor.execute("PRAGMA temp_store = MEMORY")
        if not in_memory:
            if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                # Both take effect only on a file with no pages yet (a new
                # store), and on an existing file `auto_vacuum` waits behind
                # a running checkpoint for nothing, so only a new file gets
                # them. A trajectory's vectors are ~2 KiB, so 4 KiB pages
                # hold one row each, half empty: 16 KiB pages cut the bytes
                # written per trajectory by about a third. Incremental
                # auto-vacuum: pages gc frees can be given back to the file
                # system (`retention.reclaim`); an older file gets it from
                # `sona-store db vacuum`.
                cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _use_wal(cursor)
            # NORMAL in WAL mode: a commit survives the process being killed,
            # not a power loss; FULL syncs the log at every commit (the
            # writer's group commit makes that one sync per group).
            cursor.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT_PAGES}")
        cursor.close()
        from sona_store.db.sqlfunctions import register_sqlite_functions

        register_sqlite_functions(dbapi_connection)

    _on_each_connection(engine, pragmas, "sona_pragmas")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        Driver(conn).execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _use_wal(cursor: Any) -> None:
    """Switch a database file to WAL once. The switch needs an exclusive lock
    and does not wait on the busy timeout, so processes opening a new file
    together retry it for as long as they would wait for any other lock."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_sqlite_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


_WHAT = {
    DatabaseUnavailableError: "is unavailable",
    DatabaseBusyError: "did not grant a lock in time",
    TransactionConflictError: "rolled the transaction back: it conflicted with a concurrent one",
}


@contextlib.contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn the database's own failures (unreachable or gone, a lock not
    granted in time, a conflict with a concurrent transaction; see `failures`)
    into their SonaStoreError, with the URL's password masked. Anything else
    propagates unchanged."""
    try:
        yield
    except DBAPIError as exc:
        kind = classify(exc)
        if kind is None:
            raise
        what = _WHAT.get(kind, "failed")
        if kind is DatabaseUnavailableError and exc.connection_invalidated:
            what = "connection was lost"
        raise kind(f"database {mask_url(engine.url)} {what}: {_first_line(exc.orig)}") from exc


def describe_database_error(exc: BaseException) -> str:
    """One line saying what the database refused, for messages and logs:
    SQLAlchemy's own text carries the SQL statement and its parameters (a
    trajectory's values, say) on later lines, the driver's error does not."""
    orig = getattr(exc, "orig", None)
    source = orig if orig is not None else exc
    return f"{type(source).__name__}: {_first_line(source)}"


def short_error(exc: BaseException) -> str:
    """One line for logs and messages: a database error as the database put
    it (`describe_database_error`), anything else its first line."""
    if isinstance(exc, SQLAlchemyError):
        return describe_database_error(exc)
    return _first_line(exc)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def transaction(engine: Engine, *, immediate: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any error. With
    `immediate`, SQLite takes its write lock at BEGIN, so two such transactions
    never interleave (PostgreSQL callers lock explicitly, see `locks`)."""
    with (
        translate_errors(engine),
        Session(
            engine.execution_options(**{IMMEDIATE: True}) if immediate else engine,
            expire_on_commit=False,
        ) as session,
        session.begin(),
    ):
        yield session


@contextlib.contextmanager
def connection_transaction(engine: Engine, *, immediate: bool = False) -> Iterator[Connection]:
    """`transaction` without the ORM, for the recording hot path: a Session's
    own bookkeeping for a transaction and a savepoint costs more than the
    statements of a small batch's micro-LoRA flush (benchmarks/README.md,
    "Figures behind the code's choices")."""
    with translate_errors(engine), engine.connect() as connection:
        if immediate:  # set in place: an option engine per call costs a Session's worth
            connection.execution_options(**{IMMEDIATE: True})
        with connection.begin():
            yield connection
