"""The schedule: which slot a scheduled cycle is for, and whether it is due.
All of it lives here, decided inside the cycle's own locked transaction, so
replicas, restarts and manual cycles all agree.

Scheduled cycles run on a grid anchored in the database, not in any process:
every replica (and a restarted service) derives the same next slot from the
last scheduled cycle (`next_slot`), so the slot serves as an idempotency key.
The slot is computed only once the store's cycle lock is held, from what
earlier cycles committed. Two replicas that fire for the same slot are
serialised by the lock; the second one then finds the slot taken and does
nothing. The unique `cycles.scheduled_for` column backs this up should
anything ever bypass the lock.
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
from sona_store.enums import CycleTrigger
from sona_store.errors import CycleInProgressError, InvalidInputError
from sona_store.results import CycleResult
from sona_store.services.cycle import attempt_cycle

LOCK_POLL_S = 0.1


def interval_delta(seconds: float) -> dt.timedelta:
    """An interval in whole milliseconds, the slots' precision: every replica
    adds exactly the same amount to the same anchor."""
    millis = round(seconds * 1000)
    if millis < 1:
        raise InvalidInputError(f"the interval must be at least 1 ms, got {seconds!r} s")
    return dt.timedelta(milliseconds=millis)


def normalise_slot(moment: dt.datetime) -> dt.datetime:
    """UTC, truncated to whole milliseconds: the same instant always gives the
    same key, whatever the backend's or the platform's timestamp precision."""
    moment = moment.astimezone(dt.timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def next_slot(session: Session, interval: dt.timedelta, now: dt.datetime) -> dt.datetime:
    """The slot the next scheduled cycle is for: due once it is not after `now`,
    otherwise the time to wake up for it.

    No scheduled cycle yet: `now`. Otherwise the last slot plus `interval`; if
    that has already passed (the service was down), the latest grid point not
    after `now`, so missed slots are coalesced into one cycle, not replayed."""
    last = cycles.last_scheduled_slot(session)
    if last is None:
        return normalise_slot(now)
    due = normalise_slot(last) + interval
    if due <= now:
        due += ((now - due) // interval) * interval
    return due


@dataclass(frozen=True)
class ScheduledSlot:
    """The slot policy of the scheduled service (see `cycle.attempt_cycle`):
    wait up to `lock_timeout` seconds for a running cycle (polling, so `stop`
    interrupts the wait on PostgreSQL; SQLite waits in its busy handler), then
    run the slot `next_slot` names if it is due at most `early` ahead of now."""

    interval: dt.timedelta
    early: dt.timedelta = dt.timedelta(0)
    lock_timeout: float = 30.0
    stop: threading.Event | None = None

    @property
    def trigger(self) -> str:
        return CycleTrigger.SCHEDULED

    @property
    def force(self) -> bool:
        return False

    def take_lock(self, session: Session) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while not acquire_cycle_lock(session, wait=False):
            if self.stop is not None and self.stop.is_set():
                raise CycleInProgressError("stopping while another cycle holds the lock")
            if time.monotonic() >= deadline:
                raise CycleInProgressError(
                    f"another cycle has held the lock for more than {self.lock_timeout:g} s"
                )
            time.sleep(LOCK_POLL_S)

    def choose_slot(self, session: Session, now: dt.datetime) -> dt.datetime:
        return next_slot(session, self.interval, now)

    def is_due(self, slot: dt.datetime | None, now: dt.datetime) -> bool:
        return slot is not None and slot <= now + self.early


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
    nothing when it is not due (`attempt_cycle` with a ScheduledSlot). Raises
    CycleInProgressError when the wait ends without the lock, SlotTakenError
    if the unique key rejects the slot, DatabaseUnavailableError, and
    CycleFailedError after writing the failed record."""
    policy = ScheduledSlot(interval, early, lock_timeout, stop)
    attempt = attempt_cycle(engine, config, policy, actor=actor)
    assert attempt.slot is not None  # ScheduledSlot always names one
    return ScheduledRun(attempt.slot, attempt.result, interval, attempt.lock_wait)


def next_due(engine: Engine, interval: dt.timedelta) -> dt.datetime:
    """When the next scheduled cycle is due, read without the lock: a hint for
    when to wake up; the cycle itself decides again under the lock."""
    with transaction(engine) as session:
        return next_slot(session, interval, utcnow())
