"""SQLite WAL checkpoints when the writing pauses, run by the store's writer.

A checkpoint copies the log into the database file and syncs both. Run in
the middle of a burst of commits it slows the writer down, wherever it runs:
SQLite's own, in the committing connection, pauses that commit for tens of
milliseconds; run from another thread, it competes with the writer for the
file and the machine (measured with batches of 100, see
benchmarks/README.md). And a checkpoint that writers keep appending behind
never finishes, so the log never restarts from its start.

The store's writer (`sona_store.services.writer`) therefore waits for its commits to
pause (`writer.QUIET_S` without one) and then runs one passive checkpoint:
with the writing idle it copies the whole log, and the next write restarts
it. Under writing that never pauses, SQLite's own checkpoint is the bound:
the engine sets it to SQLITE_AUTOCHECKPOINT_PAGES (see `engine`).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.engine import Engine


def wal_checkpoint(engine: Engine) -> tuple[int, int, int]:
    """One passive checkpoint: (busy, frames in the log, frames copied).
    Passive: never waits for readers or writers, copies what it can."""
    # The driver connection itself, outside any transaction: a checkpoint
    # cannot run inside one.
    raw = engine.raw_connection()
    try:
        sqlite = cast(Any, raw.driver_connection)  # the sqlite3 connection
        row = sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        raw.close()
    return int(row[0]), int(row[1]), int(row[2])


def is_sqlite_file(engine: Engine) -> bool:
    """Whether the store is a SQLite file (a WAL to checkpoint)."""
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")
