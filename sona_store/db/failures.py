"""Driver errors, classified by what the database reported rather than by its
wording: PostgreSQL's SQLSTATE (psycopg's `sqlstate`, psycopg2's `pgcode`)
and SQLite's extended result code (`sqlite_errorname`, Python 3.11+). Message
text changes with the server's version and locale; these codes do not.

Each class of failure has its own SonaStoreError (`sona_store.errors`), raised
from the driver's error by `engine.translate_errors`. What is not classified
here (a constraint the code should have kept, a syntax error) is a bug and
propagates as SQLAlchemy raised it.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from sqlalchemy.exc import DBAPIError

from sona_store.errors import (
    DatabaseBusyError,
    DatabaseError,
    DatabaseUnavailableError,
    TransactionConflictError,
)

# PostgreSQL (Appendix A, "PostgreSQL Error Codes").
PG_UNAVAILABLE_CLASS = "08"  # connection_exception
PG_UNAVAILABLE = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, recovering)
        "57P04",  # database_dropped
        "57P05",  # idle_session_timeout
        "53300",  # too_many_connections
    }
)
PG_BUSY = frozenset({"55P03"})  # lock_not_available (lock_timeout, NOWAIT)
PG_CONFLICT = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
PG_UNIQUE_VIOLATION = "23505"

# SQLite extended result codes, by name.
SQLITE_UNAVAILABLE_PREFIX = "SQLITE_CANTOPEN"  # and its extended codes
SQLITE_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_BUSY_RECOVERY", "SQLITE_BUSY_TIMEOUT"})
SQLITE_LOCKED_PREFIX = "SQLITE_LOCKED"  # a lock held by this process's other connection
# A WAL reader whose snapshot is older than the last commit may not write:
# the transaction must start again, as after a serialization failure.
SQLITE_CONFLICT = frozenset({"SQLITE_BUSY_SNAPSHOT"})
SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


def sqlstate(orig: Any) -> str | None:
    """PostgreSQL's SQLSTATE of a driver error (None: not from the server)."""
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def sqlite_code(orig: Any) -> str | None:
    """SQLite's extended result code name of a driver error (None: not SQLite's)."""
    if not isinstance(orig, sqlite3.Error):
        return None
    name = getattr(orig, "sqlite_errorname", None)
    return name if isinstance(name, str) else None


def _psycopg_connection_failure(orig: Any) -> bool:
    """psycopg raises a plain OperationalError, with no SQLSTATE, when libpq
    cannot connect or loses the connection (the server sent no error: it was
    refused, timed out, or went away); its subclasses without a SQLSTATE are
    client-side states (an aborted pipeline), not the server's absence."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or sqlstate(orig) is not None:
        return False
    return type(orig) is psycopg.OperationalError or isinstance(
        orig, psycopg.errors.ConnectionTimeout
    )


def classify(exc: DBAPIError) -> type[DatabaseError] | None:
    """The SonaStoreError class for a driver error, or None: not one of the
    database's own conditions (it is left to propagate)."""
    if exc.connection_invalidated:  # SQLAlchemy saw the connection die
        return DatabaseUnavailableError
    orig = exc.orig
    name = sqlite_code(orig)
    if name is not None:
        if name.startswith(SQLITE_UNAVAILABLE_PREFIX):
            return DatabaseUnavailableError
        if name in SQLITE_CONFLICT:
            return TransactionConflictError
        if name in SQLITE_BUSY or name.startswith(SQLITE_LOCKED_PREFIX):
            return DatabaseBusyError
        return None
    code = sqlstate(orig)
    if code is None:
        return DatabaseUnavailableError if _psycopg_connection_failure(orig) else None
    if code.startswith(PG_UNAVAILABLE_CLASS) or code in PG_UNAVAILABLE:
        return DatabaseUnavailableError
    if code in PG_BUSY:
        return DatabaseBusyError
    if code in PG_CONFLICT:
        return TransactionConflictError
    return None


PG_OUT_OF_SPACE = frozenset({"53100", "53200"})  # disk_full, out_of_memory
SQLITE_OUT_OF_SPACE = frozenset({"SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC"})


def is_out_of_space(exc: BaseException) -> bool:
    """The database could not write for want of space: a disk (or SQLite's
    `max_page_count`) full, or a server out of memory. An operator frees
    it; writing again then succeeds."""
    if not isinstance(exc, DBAPIError):
        return False
    return sqlstate(exc.orig) in PG_OUT_OF_SPACE or sqlite_code(exc.orig) in SQLITE_OUT_OF_SPACE


def is_unique_violation(exc: BaseException) -> bool:
    """A unique or primary key refused a row (SQLSTATE 23505; SQLite's
    SQLITE_CONSTRAINT_UNIQUE or _PRIMARYKEY)."""
    if not isinstance(exc, DBAPIError):
        return False
    return sqlstate(exc.orig) == PG_UNIQUE_VIOLATION or sqlite_code(exc.orig) in SQLITE_UNIQUE


def is_sqlite_busy(exc: sqlite3.Error) -> bool:
    """SQLite could not take a lock (busy, or locked by another connection)."""
    name = sqlite_code(exc) or ""
    return name in SQLITE_BUSY or name.startswith(SQLITE_LOCKED_PREFIX)
