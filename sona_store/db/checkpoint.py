"""SQLite WAL checkpoints off the writer's thread, when the writer pauses.

A checkpoint copies the log into the database file and syncs both. Run in
the middle of a burst of commits it slows the writer down, wherever it runs:
SQLite's own, in the committing connection, pauses that commit for tens of
milliseconds; run from another thread, it competes with the writer for the
file and the machine (measured with batches of 100: 40k trajectories/s with
no checkpoint during the burst, 25-30k/s checkpointing every 0.1 s on a
thread, see benchmarks/README.md). And a checkpoint that writers keep
appending behind never finishes, so the log never restarts from its start.

A `WalCheckpointer` therefore waits for the commits to pause (QUIET_S
without one) and then runs a passive checkpoint from a thread of its own:
with the writer idle it copies the whole log, and the next write restarts
it. Under writing that never pauses, SQLite's own checkpoint is the bound:
the engine sets it to SQLITE_AUTOCHECKPOINT_PAGES (see `engine`).

The thread and the engine's commit listener hold the checkpointer only
weakly: a store dropped without `close()` takes its thread down with it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Engine

logger = logging.getLogger("sona_store")

IDLE_WAIT_S = 1.0  # how often an idle thread checks whether it should stop
QUIET_S = 0.2  # no commit for this long: the writer has paused


class WalCheckpointer:
    """One per store on a SQLite file. `notify` after a commit is cheap (a
    timestamp); the thread runs one passive checkpoint per pause in the commits."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.checkpoints = 0  # completed runs, for tests and diagnostics
        self.last_commit = time.monotonic()
        self._listener = _notifier(weakref.ref(self))
        event.listen(engine, "commit", self._listener)
        # Collected without close(): wake the thread so it sees it is alone.
        self._finalizer = weakref.finalize(self, _stop, self._wanted, self._stopped)

    def notify(self) -> None:
        """After every commit, so it must be cheap: a timestamp, and a wake-up
        only for a thread sleeping idle (waking it per commit cost ~75 µs)."""
        self.last_commit = time.monotonic()
        if self._wanted.is_set():
            return
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
            sqlite = cast(Any, raw.driver_connection)  # the sqlite3 connection
            row = sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
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
        if not _wait_for_a_pause(ref, stopped):
            return
        wanted.clear()  # commits from now on ask for another checkpoint
        checkpointer = ref()
        if checkpointer is None:
            return
        try:
            checkpointer.checkpoint()
        except Exception as exc:  # SQLite's own checkpoint still runs
            logger.debug("background WAL checkpoint skipped: %s", exc)
        del checkpointer  # hold it only while checkpointing


def _wait_for_a_pause(ref: weakref.ref[WalCheckpointer], stopped: threading.Event) -> bool:
    """Sleep until QUIET_S have passed since the last commit; False when the
    store is closed or gone meanwhile."""
    while not stopped.is_set():
        checkpointer = ref()
        if checkpointer is None:
            return False
        remaining = checkpointer.last_commit + QUIET_S - time.monotonic()
        del checkpointer
        if remaining <= 0:
            return True
        stopped.wait(remaining)
    return False
