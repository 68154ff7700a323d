"""SQLite WAL checkpoints off the writer's thread.

By default SQLite checkpoints in whichever connection commits past 1000 WAL
pages: that commit then copies the whole log into the database file and
syncs it, a pause of tens of milliseconds in the middle of recording. A
`WalCheckpointer` runs passive checkpoints from a thread of its own after
commits instead, while writers keep appending to the log (WAL allows both at
once; sqlite3 releases the GIL while it works). SQLite's own checkpoint stays
in place as the safety net should this thread fall behind.

The thread and the engine's commit listener hold the checkpointer only
weakly: a store dropped without `close()` takes its thread down with it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

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
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.checkpoints = 0  # completed runs, for tests and diagnostics
        self._listener = _notifier(weakref.ref(self))
        event.listen(engine, "commit", self._listener)
        # Collected without close(): wake the thread so it sees it is alone.
        self._finalizer = weakref.finalize(self, _stop, self._wanted, self._stopped)

    def notify(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopped.is_set():
                    self._thread = threading.Thread(
                        target=_run,
                        args=(weakref.ref(self), self._wanted, self._stopped),
                        name="sona-wal-checkpoint",
                        daemon=True,
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

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running). Safe to
        call more than once."""
        with self._start_lock:
            if self._stopped.is_set() and self._thread is None:
                return
            _stop(self._wanted, self._stopped)
            thread, self._thread = self._thread, None
        if event.contains(self.engine, "commit", self._listener):
            event.remove(self.engine, "commit", self._listener)
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _notifier(ref: weakref.ref[WalCheckpointer]) -> Callable[[object], None]:
    def on_commit(_connection: object) -> None:
        checkpointer = ref()
        if checkpointer is not None:
            checkpointer.notify()

    return on_commit


def _stop(wanted: threading.Event, stopped: threading.Event) -> None:
    stopped.set()
    wanted.set()


def _run(
    ref: weakref.ref[WalCheckpointer], wanted: threading.Event, stopped: threading.Event
) -> None:
    while not stopped.is_set():
        if not wanted.wait(IDLE_WAIT_S):
            if ref() is None:
                return
            continue
        wanted.clear()
        checkpointer = ref()
        if stopped.is_set() or checkpointer is None:
            return
        started = time.monotonic()
        try:
            checkpointer.checkpoint()
        except Exception as exc:  # SQLite's own checkpoint still runs
            logger.debug("background WAL checkpoint skipped: %s", exc)
        del checkpointer  # hold it only while checkpointing
        stopped.wait(max(0.0, started + MIN_INTERVAL_S - time.monotonic()))
