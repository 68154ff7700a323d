"""The store's one background worker: group commit of recorded trajectories,
and the store's other background writes (micro-LoRA flushes, pattern access
counts, SQLite WAL checkpoints).

Why one thread: an LLM router records from many threads or tasks at once.
Each committing on its own pays a transaction per trajectory and, on SQLite,
queues in the busy handler for the one write lock. Here callers validate on
their own thread (bad input raises there and queues nothing) and hand the
validated batch to the writer, which commits whatever has arrived as one
transaction: one BEGIN/COMMIT and one multi-row insert per table for the
whole group. A caller that waits (`wait=True`) gets its ids once their
commit is done; one that does not is committed at most `max_delay` later.

Failures. A database error the writer can outlast (a lost connection, a
server restarting, a lock, a full disk) is retried with backoff; queued
trajectories are kept in order and written once the database is back. A caller waiting more
than `write_timeout` gets RecordingTimeoutError (its trajectory stays queued).
Nothing is written twice: on PostgreSQL a group's ids are drawn from the
sequence before its insert and kept with the queued trajectories, so a retry
after a commit whose outcome is unknown (the connection died during COMMIT)
first looks for those ids and skips the trajectories already stored. SQLite
runs in-process: a COMMIT that raises did not commit, so its ids are drawn
again. Any other error (a bug, a constraint) has the group's jobs written
one by one, so that only a job that fails by itself fails, and its caller
gets the error.

The writer holds one connection between groups (no checkout, no pool
pre-ping per group); a connection that fails is closed and a new one taken
for the next attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sona_store.db import failures, trajectories
from sona_store.db.driver import Driver
from sona_store.db.engine import IMMEDIATE, short_error
from sona_store.db.models import Trajectory
from sona_store.errors import (
    DatabaseError,
    RecordingError,
    RecordingTimeoutError,
    UnwrittenTrajectoriesError,
)
from sona_store.services.validation import Recordable

logger = logging.getLogger("sona_store")

GROUP_MAX = 2000  # trajectories committed in one transaction at most
RETRY_FIRST_S = 0.05  # backoff after a failed group: doubling up to RETRY_MAX_S
RETRY_MAX_S = 2.0
QUIET_S = 0.2  # no commit for this long: the writing has paused (WAL checkpoint)
# Waiting callers: the writer waits up to this long (and never beyond
# `max_delay`) for as many jobs as its last group had, so threads that each
# wait on their commit share one (PostgreSQL's commit_delay, bounded).
GATHER_S = 0.001


@dataclass(eq=False, slots=True)
class Job:
    """One caller's validated batch, waiting for its commit. A caller that
    blocks (`wait=True`) waits on `done`, a lock held until the writer
    settles the job (cheaper than a Future: this is every request of a
    router); one that does not holds `future`. Either gets the ids, or
    the one id of a `single` job."""

    batch: Recordable  # a validated batch, or one live trajectory
    waited: bool  # a caller blocks on it: commit without waiting for more
    queued_at: float
    single: bool = False
    future: Future[Any] | None = None
    done: threading.Lock | None = None
    outcome: Any = None  # the ids (or id), or the exception, once settled
    ids: list[int] | None = None  # drawn before the insert (PostgreSQL), kept across retries

    def resolve(self, ids: list[int]) -> None:
        value = ids[0] if self.single else ids
        if self.future is not None:
            self.future.set_result(value)
        else:
            self.outcome = value
            cast(threading.Lock, self.done).release()

    def reject(self, exc: BaseException) -> None:
        if self.future is not None:
            self.future.set_exception(exc)
        else:
            self.outcome = exc
            cast(threading.Lock, self.done).release()


@dataclass
class WriterStats:
    """What the writer has done, for `SonaStore.stats()` and tests."""

    groups: int = 0  # committed transactions
    trajectories: int = 0
    retries: int = 0
    checkpoints: int = 0
    last_error: str | None = None


GroupCommit = Callable[[Connection, list[Recordable], list[int] | None], list[int]]


@dataclass
class Housekeeping:
    """Background writes other than recording, run on the writer's thread."""

    flush: Callable[[], int]  # micro-LoRA flush of every pending signal
    accesses: Callable[[], object]  # write counted pattern accesses
    checkpoint: Callable[[], object] | None  # SQLite file: one passive WAL checkpoint
    prepare: Callable[[], None] = field(default=lambda: None)  # before a group's transaction


class Writer:
    """The store's background worker (thread-safe). `commit(connection,
    items, ids)` inserts a group (its jobs' batches, in order) inside the
    writer's transaction and returns its ids; the writer owns the
    transaction around it."""

    def __init__(
        self,
        engine: Engine,
        commit: GroupCommit,
        after_group: Callable[[bool], None],
        housekeeping: Housekeeping,
        *,
        max_delay: float,
        max_queued: int,
        write_timeout: float,
    ):
        self.engine = engine
        self._commit = commit
        self._after_group = after_group
        self._housekeeping = housekeeping
        self.max_delay = max_delay
        self.max_queued = max_queued
        self.write_timeout = write_timeout
        self.stats = WriterStats()
        self._cond = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._queued = 0  # trajectories in _jobs and in the group being committed
        self._waiters = 0  # jobs in _jobs a caller waits on
        # (sequence, work, its future): run on the writer once the jobs queued
        # before it are settled (a flush; a catch-up after bulk ingest)
        self._barriers: list[tuple[int, Callable[[], int], Future[int]]] = []
        self._last_group = 0  # jobs the last group committed
        self._sequence = 0  # jobs ever queued
        self._done = 0  # jobs ever settled (committed or failed)
        self._accesses_due = False
        self._last_commit: float | None = None  # when a commit left the log to checkpoint
        self._closing = False
        self._abandon = False
        self._connection: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="sona-store-writer", daemon=True)
        self._thread.start()

    # -- callers ------------------------------------------------------------------

    def submit(
        self,
        batch: Recordable,
        *,
        wait: bool,
        block: bool = True,
        single: bool = False,
        future: bool = False,
    ) -> Job:
        """Queue a validated batch. `wait`: a caller will block on it
        (`result`), so it is committed without waiting for more; `future`:
        the job carries a Future of its ids (`single`: of its one id). A
        full queue blocks (up to `write_timeout`, then RecordingTimeoutError,
        nothing queued); with `block=False` it raises BlockingIOError instead."""
        n = len(batch)
        job = Job(batch, wait, time.monotonic(), single)
        if future:
            job.future = Future()
            job.future.set_running_or_notify_cancel()  # cancelling would not unqueue it
        else:
            job.done = threading.Lock()
            job.done.acquire()
        with self._cond:
            if self._closing:
                raise RecordingError("the store is closed: nothing was recorded")
            if self._queued and self._queued + n > self.max_queued:
                if not block:
                    raise BlockingIOError("the recording queue is full")
                deadline = time.monotonic() + self.write_timeout
                while self._queued and self._queued + n > self.max_queued:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closing:
                        raise RecordingTimeoutError(
                            f"the recording queue stayed full ({self._queued} trajectories) "
                            f"for {self.write_timeout:g} s{self._because()}: nothing was queued"
                        )
                    self._cond.wait(remaining)
            wake = not self._jobs or wait or self._queued + n >= GROUP_MAX
            self._jobs.append(job)
            self._queued += n
            self._sequence += 1
            if wait:
                self._waiters += 1
            if wake:
                self._cond.notify_all()
        return job

    def result(self, job: Job) -> Any:
        """Wait for a job's ids (or id), up to `write_timeout`."""
        if job.future is not None:
            try:
                return job.future.result(self.write_timeout)
            except TimeoutError:
                raise self._timeout() from None
        if not cast(threading.Lock, job.done).acquire(timeout=self.write_timeout):
            raise self._timeout()
        if isinstance(job.outcome, BaseException):
            raise job.outcome
        return job.outcome

    def _timeout(self) -> RecordingTimeoutError:
        return RecordingTimeoutError(
            f"not committed within {self.write_timeout:g} s{self._because()}; "
            "the trajectory stays queued and is written when the database is back"
        )

    def flush(self) -> int:
        """Wait until everything queued so far is committed, then apply every
        pending micro-LoRA signal and write the access counts (on the writer);
        the number of signals applied."""

        def flush() -> int:
            applied = self._housekeeping.flush()
            self._housekeeping.accesses()
            return applied

        return self.call(flush, "flush")

    def call(self, work: Callable[[], int], what: str) -> int:
        """Run `work` on the writer once everything queued so far is
        committed, and return its result (micro-LoRA work never runs on a
        caller's thread)."""
        request: Future[int] = Future()
        request.set_running_or_notify_cancel()
        with self._cond:
            if self._closing:
                raise RecordingError("the store is closed")
            self._barriers.append((self._sequence, work, request))
            self._cond.notify_all()
        try:
            return request.result(self.write_timeout)
        except TimeoutError:
            raise RecordingTimeoutError(
                f"{what} did not complete within {self.write_timeout:g} s{self._because()}; "
                f"{self.queued} trajectories are queued and are written when the database is back"
            ) from None

    def accesses_due(self) -> None:
        """Pattern access counts are due: write them soon (from the writer)."""
        with self._cond:
            self._accesses_due = True
            self._cond.notify_all()

    def wrote(self) -> None:
        """Another of the store's transactions committed (a cycle, a
        rollback, an ingest): its log is checkpointed once writing pauses."""
        if self._housekeeping.checkpoint is None:
            return
        with self._cond:
            self._last_commit = time.monotonic()
            self._cond.notify_all()

    def stop_soon(self) -> None:
        """Write what is queued and stop, without waiting (the store was
        dropped without `close`)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        with self._cond:
            return self._queued

    def close(self) -> None:
        """Write what is queued (waiting up to `write_timeout` for a failing
        database), stop the thread and release the connection. Raises
        UnwrittenTrajectoriesError, with their count, when it could not."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.write_timeout)
        lost = 0
        if self._thread.is_alive():
            with self._cond:
                self._abandon = True
                self._cond.notify_all()
            self._thread.join()
        with self._cond:
            lost = self._queued
            error = self._because()
            abandoned = list(self._jobs)
            self._jobs.clear()
            self._queued = 0
        self._release()
        if lost:
            exc = UnwrittenTrajectoriesError(
                f"close() could not write {lost} queued trajectories within "
                f"{self.write_timeout:g} s{error}: they are lost with this process",
                count=lost,
            )
            for job in abandoned:
                job.reject(exc)
            raise exc

    def _because(self) -> str:
        error = self.stats.last_error
        return f" (the database is failing: {error})" if error else ""

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        group: list[Job] = []
        while True:
            with self._cond:
                taken = self._next_group(group)
                if taken is None:
                    return
                group = taken
                housekeeping = not group
            if housekeeping:
                self._housekeep()
                continue
            group = self._write(group)
            if not group:
                delay = RETRY_FIRST_S
                continue
            with self._cond:  # failed: retry after a pause (new jobs may join)
                self.stats.retries += 1
                resume = time.monotonic() + delay
                while not self._abandon and (remaining := resume - time.monotonic()) > 0:
                    self._cond.wait(remaining)  # callers' notifications do not cut it short
                if self._abandon:
                    self._jobs.extendleft(reversed(group))
                    return
            delay = min(delay * 2, RETRY_MAX_S)

    def _next_group(self, retrying: list[Job]) -> list[Job] | None:
        """Under the lock: the jobs to commit now (with `retrying` first), an
        empty list for housekeeping, None to stop. Waits for a reason to act."""
        while True:
            if self._abandon:
                self._jobs.extendleft(reversed(retrying))
                return None
            now = time.monotonic()
            if not retrying and (
                self._accesses_due or any(b[0] <= self._done for b in self._barriers)
            ):
                # Access counts due, or a flush whose trajectories are all
                # committed: before more groups (writing never starves them).
                return []
            if retrying or self._jobs:
                oldest = retrying[0] if retrying else self._jobs[0]
                due = oldest.queued_at + self.max_delay
                if self._waiters and not (retrying or self._barriers or self._closing):
                    # Callers wait: commit now, unless the last group was
                    # larger and its like may still arrive (GATHER_S at most).
                    gather = oldest.queued_at + min(GATHER_S, self.max_delay)
                    if len(self._jobs) < self._last_group and now < gather:
                        self._cond.wait(gather - now)
                        continue
                    return self._take(retrying)
                if (
                    retrying
                    or self._barriers  # a flush waits for these
                    or self._closing
                    or self._queued >= GROUP_MAX
                    or now >= due
                ):
                    return self._take(retrying)
                self._cond.wait(due - now)
                continue
            if self._barriers or self._accesses_due or self._checkpoint_due(now):
                return []
            if self._closing:
                return None
            self._cond.wait(self._idle_wait(now))

    def _take(self, group: list[Job]) -> list[Job]:
        size = sum(len(job.batch) for job in group)
        while self._jobs and (not group or size + len(self._jobs[0].batch) <= GROUP_MAX):
            job = self._jobs.popleft()
            if job.waited:
                self._waiters -= 1
            group.append(job)
            size += len(job.batch)
        return group

    def _checkpoint_due(self, now: float) -> bool:
        return (
            self._housekeeping.checkpoint is not None
            and self._last_commit is not None
            and now - self._last_commit >= QUIET_S
        )

    def _idle_wait(self, now: float) -> float | None:
        if self._housekeeping.checkpoint is not None and self._last_commit is not None:
            return max(0.0, self._last_commit + QUIET_S - now)
        return None

    def _write(self, group: list[Job]) -> list[Job]:
        """Commit one group; the jobs left to retry once the database is back
        (none: every job is settled, committed or failed)."""
        pending = group
        try:
            self._housekeeping.prepare()
            connection = self._connect()
            pending = self._skip_stored(connection, group)  # settles what is stored
            if pending:
                self._insert(connection, pending)
        except Exception as exc:
            self._release()
            if _transient(exc):
                self._note_failure(exc)
                if self.engine.dialect.name != "postgresql":
                    for job in pending:  # outcome known: nothing of it was committed
                        job.ids = None
                return pending
            if len(pending) > 1:
                # One job's data, or a bug: each job alone, so that only a
                # job that fails by itself fails (its caller gets the error).
                for i, job in enumerate(pending):
                    if self._write([job]):
                        return pending[i:]
                return []
            self._fail(pending, exc)
            return []
        self.stats.last_error = None
        return []

    def _insert(self, connection: Connection, group: list[Job]) -> None:
        items = [job.batch for job in group]
        ids: list[int] | None = None
        committed = False
        try:
            with connection.begin():
                if self.engine.dialect.name == "postgresql":
                    self._reserve(connection, group)
                    ids = [i for job in group for i in job.ids or ()]
                ids = self._commit(connection, items, ids)
            committed = True
        finally:
            self._after_group(committed)
        start = 0
        for job in group:
            n = len(job.batch)
            job.resolve(ids[start : start + n])
            start += n
        with self._cond:
            self._last_group = len(group)
            self.stats.groups += 1
            if self._housekeeping.checkpoint is not None:
                self._last_commit = time.monotonic()
            self._settle(len(group), len(ids), stored=True)

    def _reserve(self, connection: Connection, group: list[Job]) -> None:
        """PostgreSQL: draw the ids of the jobs that have none yet, before the
        insert, and keep them with the jobs (a sequence never hands one out
        twice, and nextval is not undone by a rollback)."""
        missing = [job for job in group if job.ids is None]
        drawn = trajectories.reserve_ids(Driver(connection), sum(len(job.batch) for job in missing))
        start = 0
        for job in missing:
            job.ids = drawn[start : start + len(job.batch)]
            start += len(job.batch)

    def _skip_stored(self, connection: Connection, group: list[Job]) -> list[Job]:
        """Of a retried group, settle the jobs an earlier attempt stored (its
        COMMIT reached the database but its answer did not); the rest."""
        reserved = [i for job in group if job.ids is not None for i in job.ids]
        if not reserved:
            return group
        table = Trajectory.__table__
        stored: set[int] = set()
        for start in range(0, len(reserved), 5000):
            chunk = reserved[start : start + 5000]
            stored.update(connection.scalars(sa.select(table.c.id).where(table.c.id.in_(chunk))))
        connection.rollback()
        if not stored:
            return group
        rest = []
        settled = 0
        for job in group:
            if job.ids is not None and job.ids[0] in stored:
                job.resolve(list(job.ids))
                settled += len(job.batch)
            else:
                rest.append(job)
        logger.info(
            "%d trajectories were committed by an earlier attempt: not written again", settled
        )
        with self._cond:
            self._settle(len(group) - len(rest), settled, stored=True)
        return rest

    def _fail(self, group: list[Job], exc: Exception) -> None:
        logger.error(
            "%d trajectories could not be recorded: %s",
            sum(len(job.batch) for job in group),
            short_error(exc),
        )
        for job in group:
            job.reject(exc)
        with self._cond:
            self._settle(len(group), sum(len(job.batch) for job in group), stored=False)

    def _settle(self, jobs: int, trajectories: int, *, stored: bool) -> None:
        """Count `jobs` holding `trajectories` as done (under `_cond`), and wake
        callers blocked on a full queue and flushes waiting for them."""
        self._queued -= trajectories
        self._done += jobs
        if stored:
            self.stats.trajectories += trajectories
        self._cond.notify_all()

    def _note_failure(self, exc: Exception) -> None:
        error = short_error(exc)
        if self.stats.last_error != error:
            logger.warning("recording deferred, retrying (trajectories stay queued): %s", error)
        self.stats.last_error = error

    def _housekeep(self) -> None:
        """Flush requests (once everything queued before them is committed),
        access counts, and a WAL checkpoint once the commits pause."""
        with self._cond:
            ready = [b for b in self._barriers if b[0] <= self._done]
            for item in ready:
                self._barriers.remove(item)
            accesses, self._accesses_due = self._accesses_due, False
            checkpoint = self._checkpoint_due(time.monotonic())
            if checkpoint:
                self._last_commit = None
        for _sequence, work, request in ready:
            try:
                result = work()
            except Exception as exc:
                request.set_exception(exc)
            else:
                request.set_result(result)
        if accesses and not ready:
            try:
                self._housekeeping.accesses()
            except Exception as exc:  # the counts were kept for the next attempt
                logger.warning("pattern access counts not written yet: %s", short_error(exc))
        if checkpoint and self._housekeeping.checkpoint is not None:
            try:
                self._housekeeping.checkpoint()
                self.stats.checkpoints += 1
            except Exception as exc:  # SQLite's own checkpoint still runs
                logger.debug("background WAL checkpoint skipped: %s", exc)

    def _connect(self) -> Connection:
        if self._connection is None:
            connection = self.engine.connect()
            connection.execution_options(**{IMMEDIATE: True})
            self._connection = connection
        return self._connection

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as exc:  # a dead connection: the pool discards it
                logger.debug("closing the writer's connection: %s", exc)


def _transient(exc: BaseException) -> bool:
    """A database failure the writer can outlast by retrying: the database
    unreachable or gone, a lock held too long, a conflict, a disk full
    (`db.failures` classifies the driver's error by its code); anything
    else is a bug or a refusal that retrying would repeat."""
    if isinstance(exc, DatabaseError):  # classified already (engine.translate_errors)
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return failures.classify(exc) is not None or failures.is_out_of_space(exc)
    return isinstance(exc, sa.exc.TimeoutError)  # the pool
