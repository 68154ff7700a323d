"""The scheduled learning service: `sona-store run` and `SonaScheduler`.

APScheduler only decides when a process wakes up. Whether a cycle runs, and for
which slot, is decided by the database under the store's cycle lock
(`scheduling.run_scheduled_cycle`): APScheduler's maintainers say several
schedulers must not share a job store, so neither the job store nor
`max_instances` is relied on across processes. The job store is the in-memory
one; the schedule itself lives in the `cycles` table, which is why a restart
neither runs an extra cycle nor skips one.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sona_store.db.engine import engine_schema, mask_url, transaction
from sona_store.db.types import utcnow
from sona_store.enums import CycleStatus, CycleTrigger
from sona_store.errors import CycleInProgressError, DatabaseUnavailableError
from sona_store.scheduler import DEFAULT_GRACE_S
from sona_store.services.cycle import CycleFailedError, SlotTakenError, record_failed_cycle
from sona_store.services.scheduling import (
    ScheduledRun,
    interval_delta,
    next_due,
    run_scheduled_cycle,
)

if TYPE_CHECKING:
    from sona_store.store import SonaStore

logger = logging.getLogger("sona_store.scheduler")

JOB_ID = "sona-store-cycle"
MAX_UNRECORDED = 1000
# `sona-store run` started while the database is down: first retry after 1 s,
# then doubling, at most every 30 s.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# PostgreSQL: notice a dead server or a cut network within about 30 s instead of
# waiting on a socket forever (connect_timeout is set by create_store_engine).
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


@dataclass(frozen=True)
class TickReport:
    """What one scheduled attempt did. `status`: ran (a cycle record was written
    for `run.slot`, or an idle tick added to the skipped record before it),
    not_due (the last scheduled cycle, by any process, was less than an
    interval ago), busy (another cycle held the lock), failed (recorded as failed),
    unavailable (the database could not be reached), stopping."""

    status: str
    run: ScheduledRun | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Unrecorded:
    """A failed attempt the database could not take when it happened."""

    started_at: dt.datetime
    elapsed: float
    error: str


class SonaScheduler:
    """Runs a store's learning cycle on a schedule, in this process.

    `SonaScheduler(store, interval)` (seconds; default: the store's
    background_interval_ms) embeds the service in an application through a
    BackgroundScheduler: `start()` returns at once, `shutdown()` waits for the
    running cycle. `blocking=True` uses a BlockingScheduler instead; `serve()`
    then runs it in the foreground until SIGTERM or SIGINT (`sona-store run`).
    Any number of schedulers, in any processes or hosts, may share one store.
    """

    def __init__(
        self,
        store: SonaStore,
        interval: float | None = None,
        *,
        blocking: bool = False,
        lock_timeout: float | None = None,
    ):
        seconds = store.config.background_interval_ms / 1000 if interval is None else interval
        self.store = store
        self.interval = interval_delta(seconds)
        seconds = self.interval.total_seconds()
        self.lock_timeout = (
            lock_timeout if lock_timeout is not None else min(30.0, max(1.0, seconds))
        )
        # A late wake-up is harmless (the database decides what is due), so the
        # grace is generous: a tick is only dropped once the next one is near.
        self.misfire_grace_time = max(1, math.ceil(seconds))
        scheduler_class = BlockingScheduler if blocking else BackgroundScheduler
        self._scheduler: BaseScheduler = scheduler_class(
            timezone=dt.timezone.utc, executors={"default": ThreadPoolExecutor(1)}
        )
        self._blocking = blocking
        self._stopping = threading.Event()
        self._busy = threading.Lock()  # held while an attempt runs
        self._unrecorded: deque[_Unrecorded] = deque(maxlen=MAX_UNRECORDED)
        self._listeners: list[Callable[[TickReport], None]] = []
        self._where = mask_url(store.engine.url)
        url = store.engine.url
        query_password = url.query.get("password")
        self._password = url.password or (
            query_password if isinstance(query_password, str) else None
        )

    # -- lifecycle --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    @property
    def unrecorded_failures(self) -> int:
        """Failed attempts waiting for the database to come back to be recorded."""
        return len(self._unrecorded)

    def start(self) -> None:
        """Schedule the cycle job, first at the slot the database says is next.
        Blocks until shutdown with `blocking=True`."""
        try:
            first = next_due(self.store.engine, self.interval)
        except Exception as exc:  # the first tick will fail and be recorded
            logger.warning("could not read the schedule: %s", self._scrub(exc))
            first = utcnow()
        self._scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=self.interval.total_seconds(), timezone=dt.timezone.utc),
            id=JOB_ID,
            name="sona-store learning cycle",
            next_run_time=max(first, utcnow()),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=self.misfire_grace_time,
            replace_existing=True,
        )
        logger.info(
            "scheduling learning cycles on %s every %s s; next slot %s",
            self._where,
            _seconds(self.interval),
            _when(first),
        )
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling. With `wait`, the running cycle finishes first (its
        transaction is short); then failed attempts not yet recorded are."""
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        if wait:
            self._finish()

    def serve(self, grace: float = DEFAULT_GRACE_S) -> bool:
        """Run in the foreground until SIGTERM or SIGINT. Returns True once no
        cycle is running; False if one still runs `grace` seconds after the
        signal: the caller should then exit, and the database rolls it back."""
        if not self._blocking:
            raise RuntimeError("serve() needs SonaScheduler(..., blocking=True)")
        signalled = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            # Only flags and a thread here: scheduler locks are not taken in a handler.
            if signalled.is_set():
                return
            signalled.set()
            self._stopping.set()
            name = signal.Signals(signum).name
            threading.Thread(target=self._stop_scheduler, args=(name,), daemon=True).start()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not self._stopping.is_set():
                self.start()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not self._busy.acquire(timeout=grace):
            logger.error("the running cycle did not finish within %g s; abandoning it", grace)
            return False
        self._busy.release()
        self._finish()
        return True

    def _stop_scheduler(self, reason: str) -> None:
        logger.info("%s received: finishing the running cycle, then stopping", reason)
        deadline = time.monotonic() + 10.0
        while not self._scheduler.running and time.monotonic() < deadline:
            time.sleep(0.01)  # the signal came while start() was still starting
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def _finish(self) -> None:
        self._record_unrecorded()
        if self._unrecorded:
            logger.error(
                "%d failed attempt(s) could not be recorded: the database is unreachable",
                len(self._unrecorded),
            )

    # -- one attempt ------------------------------------------------------------------

    def _tick(self) -> None:
        report = self.run_once()
        if report.run is not None and not self._stopping.is_set():
            self._wake_at(report.run.next_due)

    def run_once(self, *, early: float = 0.0) -> TickReport:
        """One scheduled attempt now (also `sona-store run --once`): run the cycle
        of the due slot, if it is due within `early` seconds. Logs one line;
        never raises for database or cycle trouble. Listeners see its report."""
        report = self._attempt(early)
        for listener in list(self._listeners):
            try:
                listener(report)
            except Exception:  # a listener's bug must not stop the service
                logger.exception("tick listener %r raised", listener)
        return report

    def add_listener(self, listener: Callable[[TickReport], None]) -> None:
        """Call `listener(report)` after every attempt, in the attempt's thread
        (metrics and health of the service, `sona_store.scheduler.health`)."""
        self._listeners.append(listener)

    @property
    def attempt_running(self) -> bool:
        return self._busy.locked()

    def _attempt(self, early: float) -> TickReport:
        with self._busy:
            if self._stopping.is_set():
                return TickReport("stopping")
            self._record_unrecorded()
            started_at, clock = utcnow(), time.perf_counter()
            try:
                run = run_scheduled_cycle(
                    self.store.engine,
                    self.store.config,
                    self.interval,
                    actor=self.store.actor,
                    early=dt.timedelta(seconds=early),
                    lock_timeout=self.lock_timeout,
                    stop=self._stopping,
                )
            except (CycleInProgressError, SlotTakenError) as exc:
                logger.info(
                    "lost the race for this slot (%s); waiting for the next one",
                    exc,
                    extra=self._event("tick", outcome="busy", error=str(exc)),
                )
                return TickReport("busy", error=str(exc))
            except DatabaseUnavailableError as exc:
                error = self._scrub(exc)
                self._remember(started_at, clock, f"{type(exc).__name__}: {error}")
                logger.error(
                    "cycle not run: %s; retrying at the next slot",
                    error,
                    extra=self._event("tick", outcome="unavailable", error=error),
                )
                return TickReport("unavailable", error=error)
            except CycleFailedError as exc:
                error = self._scrub(exc)
                event = self._event(
                    "cycle",
                    outcome="failed",
                    status=CycleStatus.FAILED,
                    cycle_id=exc.cycle_id,
                    error=error,
                )
                if exc.cycle_id is None:  # the failure could not be written either
                    self._remember(started_at, clock, f"{type(exc.__cause__).__name__}: {error}")
                    logger.error("cycle failed: %s (to be recorded later)", error, extra=event)
                else:
                    logger.error("cycle %d failed: %s", exc.cycle_id, error, extra=event)
                return TickReport("failed", error=error)
            except Exception as exc:  # a bug: keep serving, say what happened
                error = self._scrub("".join(traceback.format_exception(exc)))
                self._remember(started_at, clock, error)
                logger.error(
                    "scheduled attempt raised unexpectedly:\n%s",
                    error,
                    extra=self._event("tick", outcome="failed", error=error),
                )
                return TickReport("failed", error=error)
            self._log(run)
            if run.result is not None and run.result.status == CycleStatus.COMPLETED:
                self._apply_retention()
        return TickReport("ran" if run.ran else "not_due", run=run)

    def _apply_retention(self) -> None:
        """gc under the stored retention policy after each completed cycle
        (a no-op without one). A failing gc is logged; the cycle stands."""
        try:
            result = self.store.gc()
        except Exception as exc:
            logger.error("gc after the cycle failed (retried after the next): %s", self._scrub(exc))
            return
        if result.trajectories:
            logger.info(
                "gc: vectors of %d trajectories deleted under %s%s (audit #%d)",
                result.trajectories,
                result.policy.describe(),
                f", archived to {result.archive}" if result.archive else "",
                result.audit_id,
            )

    def _log(self, run: ScheduledRun) -> None:
        result = run.result
        if result is None:
            logger.info(
                "not due: the last scheduled cycle was for slot %s, less than an interval "
                "(%s s) ago; next slot %s",
                _when(run.slot - run.interval),
                _seconds(run.interval),
                _when(run.slot),
                extra=self._event("tick", outcome="not_due", slot=_when(run.slot)),
            )
            return
        if result.attempts > 1:
            logger.info(
                "cycle %s skipped for slot %s (%s); %d idle ticks since %s share this record",
                result.cycle_id,
                _when(run.slot),
                result.reason,
                result.attempts,
                _when(result.started_at),
                extra=self._event(
                    "tick",
                    outcome="skipped",
                    cycle_id=result.cycle_id,
                    slot=_when(run.slot),
                    attempts=result.attempts,
                    reason=result.reason,
                ),
            )
            return
        event = self._event(
            "cycle",
            outcome="ran",
            cycle_id=result.cycle_id,
            status=result.status,
            slot=_when(run.slot),
            trajectories=result.trajectories_processed,
            patterns=result.patterns_extracted,
            window=result.window_size,
            elapsed_seconds=round(result.elapsed, 6),
            lock_wait_seconds=round(run.lock_wait, 6),
            reason=result.reason,
        )
        logger.info(
            "cycle %s %s for slot %s: %d trajectories, %d patterns, window %d, %.3f s%s",
            result.cycle_id,
            result.status,
            _when(run.slot),
            result.trajectories_processed,
            result.patterns_extracted,
            result.window_size,
            result.elapsed,
            f" ({result.reason})" if result.reason else "",
            extra=event,
        )

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A tick's log line as fields, for `--log-format json` (`sona_store.scheduler.logjson`)."""
        return {"sona": {"event": kind, "schema": engine_schema(self.store.engine), **fields}}

    def _wake_at(self, moment: dt.datetime) -> None:
        """Align the next wake-up with the database's schedule (it may have been
        set by another replica, or by this one before a restart)."""
        try:
            job = self._scheduler.get_job(JOB_ID)
            if job is not None and abs((job.next_run_time - moment).total_seconds()) > 0.001:
                self._scheduler.modify_job(JOB_ID, next_run_time=moment)
        except Exception as exc:  # shutting down meanwhile: nothing to align
            logger.debug("could not move the next wake-up: %s", exc)

    # -- failures the database could not take ------------------------------------------

    def _remember(self, started_at: dt.datetime, clock: float, error: str) -> None:
        if len(self._unrecorded) == self._unrecorded.maxlen:
            logger.warning("too many unrecorded failures; forgetting the oldest")
        self._unrecorded.append(_Unrecorded(started_at, time.perf_counter() - clock, error))

    def _record_unrecorded(self) -> None:
        """Write the failed attempts made while the database was unreachable,
        oldest first, once it answers again."""
        if not self._unrecorded or not self._database_answers():
            return
        while self._unrecorded:
            item = self._unrecorded[0]
            cycle_id = record_failed_cycle(
                self.store.engine,
                self.store.config,
                trigger=CycleTrigger.SCHEDULED,
                actor=self.store.actor,
                started_at=item.started_at,
                error=f"{item.error} (recorded once the database answered again)",
                elapsed=item.elapsed,
            )
            if cycle_id is None:
                return
            self._unrecorded.popleft()
            logger.info(
                "recorded the failed attempt of %s as cycle %d", _when(item.started_at), cycle_id
            )

    def _database_answers(self) -> bool:
        try:
            with transaction(self.store.engine) as session:
                session.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    def _scrub(self, error: BaseException | str) -> str:
        """The text with the database password masked, wherever it came from."""
        text = str(error)
        return scrub_password(text, self._password)

    scrub = _scrub


def scrub_password(text: str, password: str | None) -> str:
    if not password:
        return text
    for form in {password, quote(password, safe=""), quote_plus(password)}:
        text = text.replace(form, "***")
    return text


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def _seconds(interval: dt.timedelta) -> str:
    return f"{interval.total_seconds():g}"


# -- command line ------------------------------------------------------------------------


def service_engine_options(url: str | sa.URL) -> dict[str, Any]:
    """Engine options for a long-running process."""
    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        return {"connect_args": dict(PG_KEEPALIVES)}
    return {}


def open_when_available(
    open_store: Callable[[], SonaStore],
    stop: threading.Event,
    *,
    first_delay: float = RETRY_FIRST_S,
    max_delay: float = RETRY_MAX_S,
    password: str | None = None,
) -> SonaStore | None:
    """`open_store()` once the database answers: while it is unavailable, log
    each attempt and retry with doubling delays (up to `max_delay`). None if
    `stop` is set first."""
    delay, attempt = first_delay, 1
    while not stop.is_set():
        try:
            return open_store()
        except DatabaseUnavailableError as exc:
            logger.warning(
                "attempt %d: %s; retrying in %g s",
                attempt,
                scrub_password(str(exc), password),
                delay,
            )
        if stop.wait(delay):
            break
        attempt, delay = attempt + 1, min(delay * 2, max_delay)
    return None


__all__ = ["SonaScheduler", "TickReport"]
