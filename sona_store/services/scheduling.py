"""Scheduled cycles: which slot is due is decided inside the cycle's own locked
transaction, so replicas, restarts and manual cycles all agree.

The slot (see `db.cycles.next_slot`) is computed only once the store's cycle
lock is held, from what earlier cycles committed. Two replicas that fire for
the same slot are serialised by the lock; the second one then finds the slot
taken and does nothing. The unique `cycles.scheduled_for` column backs this up
should anything ever bypass the lock.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sona_store.config import SonaConfig
from sona_store.db import cycles
from sona_store.db.engine import transaction
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.types import utcnow
from sona_store.errors import CycleInProgressError
from sona_store.results import CycleResult
from sona_store.services.cycle import cycle_body, cycle_failure, fail_cycle

LOCK_POLL_S = 0.1


def interval_delta(seconds: float) -> dt.timedelta:
    """An interval in whole milliseconds, the slots' precision: every replica
    adds exactly the same amount to the same anchor."""
    millis = round(seconds * 1000)
    if millis < 1:
        raise ValueError(f"the interval must be at least 1 ms, got {seconds!r} s")
    return dt.timedelta(milliseconds=millis)


@dataclass(frozen=True)
class ScheduledRun:
    """The outcome of one scheduled attempt that reached the database."""

    slot: dt.datetime  # the slot run, or the one not due yet
    result: CycleResult | None  # None: not due (another process ran it)
    interval: dt.timedelta
    lock_wait: float = 0.0  # seconds spent waiting for the cycle lock

    @property
    def ran(self) -> bool:
        return self.result is not None

    @property
    def next_due(self) -> dt.datetime:
        return self.slot + self.interval if self.ran else self.slot


def run_scheduled_cycle(
    engine: Engine,
    config: SonaConfig,
    interval: dt.timedelta,
    *,
    actor: str | None = None,
    early: dt.timedelta = dt.timedelta(0),
    lock_timeout: float = 30.0,
    stop: threading.Event | None = None,
) -> ScheduledRun:
    """Run the cycle of the slot that is due (at most `early` ahead of now), or
    nothing when it is not due. Waits up to `lock_timeout` seconds for a running
    cycle (PostgreSQL polls, so `stop` interrupts the wait; SQLite waits in its
    busy handler). Raises CycleInProgressError when the wait ends without the
    lock, SlotTakenError if the unique key rejects the slot, DatabaseUnavailable-
    Error, and CycleFailedError after writing the failed record."""
    actor = actor or cycles.default_actor()
    started_at = utcnow()
    clock = time.perf_counter()
    slot: dt.datetime | None = None
    try:
        with transaction(engine, immediate=True) as session:
            _wait_for_lock(session, lock_timeout, stop)
            lock_wait = time.perf_counter() - clock
            started_at = utcnow()
            clock = time.perf_counter()
            slot = cycles.next_slot(session, interval, started_at)
            if slot > started_at + early:
                return ScheduledRun(slot, None, interval, lock_wait)
            record = cycle_body(
                session,
                config,
                force=False,
                trigger="scheduled",
                actor=actor,
                started_at=started_at,
                scheduled_for=slot,
                clock=clock,
            )
        return ScheduledRun(slot, cycles.cycle_result(record), interval, lock_wait)
    except Exception as exc:
        failure = cycle_failure(exc, slot)
    fail_cycle(
        engine,
        config,
        failure,
        trigger="scheduled",
        actor=actor,
        started_at=started_at,
        scheduled_for=slot,
        clock=clock,
    )


def _wait_for_lock(session: Session, timeout: float, stop: threading.Event | None) -> None:
    deadline = time.monotonic() + timeout
    while not acquire_cycle_lock(session, wait=False):
        if stop is not None and stop.is_set():
            raise CycleInProgressError("stopping while another cycle holds the lock")
        if time.monotonic() >= deadline:
            raise CycleInProgressError(
                f"another cycle has held the lock for more than {timeout:g} s"
            )
        time.sleep(LOCK_POLL_S)


def next_due(engine: Engine, interval: dt.timedelta) -> dt.datetime:
    """When the next scheduled cycle is due, read without the lock: a hint for
    when to wake up; the cycle itself decides again under the lock."""
    with transaction(engine) as session:
        return cycles.next_slot(session, interval, utcnow())
