"""The handoff and commit floors: the least any in-process Python recorder
can do per call, measured with the recording benchmark's own call loop.

An `end_trajectory(wait=True)` that returns the id once a commit holding it
is done must, in CPython, hand the trajectory to whichever thread commits
and block until that thread says so; with several recording threads that
is a sleep and a wake-up per call, under one GIL. This floor does only
that: it converts the two vectors with numpy's cheapest conversion (no
check of any kind), appends them to a deque and, with `wait=True`, blocks
on a lock the one consumer thread releases at once. No validation, no
database, no learning. The commit floor adds what durability cannot do
without: its consumer writes each group it drains in the fastest raw way
(sqlite3 executemany; psycopg binary COPY) of the same vectors (float32
bytes) and quality into a plain table, commits, and only then releases the
group's callers (SQLite: WAL, synchronous=NORMAL and 16 KiB pages, as the
store's files). Still no
validation, no learning, no ids handed back. Whatever the store does costs
more than this, so a shape whose floor is below a target's ratio of the
reference cannot meet that target by any work on the store
(benchmarks/README.md)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.pool import NullPool


class _FloorTrajectory:
    __slots__ = ("query", "activations", "quality")

    def __init__(self, query: Any):
        self.query = np.asarray(query, dtype=np.float64)
        self.activations: np.ndarray | None = None
        self.quality = 0.0

    def add_step(self, activations: Any, attention_weights: Any, reward: float) -> None:
        self.activations = np.asarray(activations, dtype=np.float64)


class HandoffFloor:
    """`begin_trajectory`/`end_trajectory` doing only the handoff; one
    consumer thread takes whatever has arrived and releases its waiters."""

    def __init__(self) -> None:
        self._queue: deque[tuple[threading.Lock | None, _FloorTrajectory]] = deque()
        self._wake = threading.Semaphore(0)
        self._stopping = False
        self.consumed = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def begin_trajectory(self, query: Any) -> _FloorTrajectory:
        return _FloorTrajectory(query)

    def end_trajectory(self, t: _FloorTrajectory, quality: float, *, wait: bool) -> None:
        lock = threading.Lock() if wait else None
        if lock is not None:
            lock.acquire()
        t.quality = quality
        self._queue.append((lock, t))
        self._wake.release()
        if lock is not None:
            lock.acquire()  # released by the consumer

    def _consume(self) -> None:
        while True:
            self._wake.acquire()
            group = []
            while self._queue:
                group.append(self._queue.popleft())
            if group and self.error is None:
                try:
                    self._write([t for _, t in group])
                except Exception as exc:  # raised by close(): callers must not hang
                    self.error = exc
            self.consumed += len(group)
            for lock, _ in group:
                if lock is not None:
                    lock.release()
            if self._stopping and not self._queue:
                return

    def _write(self, group: list[_FloorTrajectory]) -> None:
        """The handoff floor writes nothing."""

    def close(self) -> None:
        """Once every call has returned: wait for the consumer to drain."""
        self._stopping = True
        self._wake.release()
        self._thread.join()
        if self.error is not None:
            raise self.error


class CommitFloor(HandoffFloor):
    """The handoff floor whose consumer commits each group it drains."""

    def __init__(self, url: str) -> None:
        engine = sa.create_engine(url, poolclass=NullPool)
        self._engine = engine
        self._fairy = engine.raw_connection()  # the pool's wrapper: kept, or it closes
        self._raw: Any = self._fairy.driver_connection
        sqlite = engine.dialect.name == "sqlite"
        self._insert = "INSERT INTO floor_rows VALUES (?, ?, ?)"  # SQLite's
        cursor = self._raw.cursor()
        if sqlite:
            self._raw.isolation_level = None  # explicit BEGIN/COMMIT below
            cursor.execute("PRAGMA page_size = 16384")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        blob, real = ("BLOB", "REAL") if sqlite else ("BYTEA", "DOUBLE PRECISION")
        cursor.execute(
            f"CREATE TABLE floor_rows (query {blob}, activations {blob}, quality {real})"
        )
        if not sqlite:
            self._raw.commit()
        self._sqlite = sqlite
        super().__init__()

    def _write(self, group: list[_FloorTrajectory]) -> None:
        rows = [
            (
                t.query.astype(np.float32).tobytes(),
                cast(np.ndarray, t.activations).astype(np.float32).tobytes(),
                float(t.quality),
            )
            for t in group
        ]
        cursor = self._raw.cursor()
        if self._sqlite:
            cursor.execute("BEGIN")
            cursor.executemany(self._insert, rows)
            cursor.execute("COMMIT")
            return
        # PostgreSQL: binary COPY, the fastest way in (the ingest benchmark's floor)
        with cursor.copy(
            "COPY floor_rows (query, activations, quality) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["bytea", "bytea", "float8"])
            for row in rows:
                copy.write_row(row)
        self._raw.commit()

    def close(self) -> None:
        super().close()
        self._fairy.close()
        self._engine.dispose()


def floor_rate(
    items: list[dict[str, Any]],
    threads: int,
    wait: bool,
    run_callers: Callable[[Any, list[dict[str, Any]], int, bool], object],
    url: str | None = None,
) -> float:
    """Trajectories per second through a floor, recorded by
    `run_callers(recorder, items, threads, wait)`: the recording benchmark's
    own threads and call loop. With `url` (a fresh database), the commit
    floor; without, the handoff floor."""
    floor = HandoffFloor() if url is None else CommitFloor(url)
    started = time.perf_counter()
    run_callers(floor, items, threads, wait)
    floor.close()
    seconds = time.perf_counter() - started
    assert floor.consumed == len(items)
    return len(items) / seconds
