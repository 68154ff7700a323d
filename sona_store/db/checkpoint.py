"""SQLite WAL checkpoints off the writer's thread.

By default SQLite checkpoints in whichever connection commits past 1000 WAL
pages: that commit then copies the whole log into the database file and
syncs it, a pause of tens of milliseconds in the middle of recording. A
`WalCheckpointer` runs passive checkpoints from a thread of its own after
commits instead, while writers keep appending to the log (WAL allows both at
once; sqlite3 releases the GIL while it works). SQLite's own checkpoint stays
in place as the safety net should this thread fall behind.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import event
from sqlalchemy.engine import Engine

logger = logging.getLogger("sona_store")

IDLE_WAIT_S = 1.0  # how often an idle thread checks whether it should stop
MIN_INTERVAL_S = 0.1  # commits in between share one checkpoint (and its fsync)


class WalCheckpointer:
    """One per store on a SQLite file. `notify` after a commit is cheap (an
    event); the thread coalesces notifications into passive checkpoints."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._wanted = threading.Event()
        self._stopping = False
        self._stopped = threading.Event()  # wakes the rate-limit pause on close
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.checkpoints = 0  # completed runs, for tests and diagnostics
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, _connection: object) -> None:
        self.notify()

    def notify(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(
                        target=self._run, name="sona-wal-checkpoint", daemon=True
                    )
                    self._thread.start()
        self._wanted.set()

    def checkpoint(self) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, frames in the log, frames copied).
        Passive: never waits for readers or writers, copies what it can."""
        # The driver connection itself, outside any transaction: a checkpoint
        # cannot run inside one.
        raw = self.engine.raw_connection()
        try:
            row = raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            raw.close()
        self.checkpoints += 1
        return int(row[0]), int(row[1]), int(row[2])

    def _run(self) -> None:
        while not self._stopping:
            if not self._wanted.wait(IDLE_WAIT_S):
                continue
            self._wanted.clear()
            if self._stopping:
                break
            started = time.monotonic()
            try:
                self.checkpoint()
            except Exception as exc:  # SQLite's own checkpoint still runs
                logger.debug("background WAL checkpoint skipped: %s", exc)
            self._stopped.wait(max(0.0, started + MIN_INTERVAL_S - time.monotonic()))

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running)."""
        event.remove(self.engine, "commit", self._on_commit)
        with self._start_lock:
            self._stopping = True
            thread = self._thread
        self._stopped.set()
        self._wanted.set()
        if thread is not None:
            thread.join()
