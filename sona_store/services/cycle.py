"""One background learning cycle: the reference's Loop B
(docs/reference.md#loop-b-the-background-cycle), in one
database transaction. Either everything a cycle does is committed, or nothing
of it is and a `failed` record says why."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from sona_store.config import SonaConfig
from sona_store.db import cycles, routes, state, trajectories
from sona_store.db.engine import mask_url, short_error, transaction
from sona_store.db.failures import is_unique_violation
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.models import Cycle, Pattern
from sona_store.db.types import utcnow
from sona_store.enums import CycleStatus, CycleTrigger
from sona_store.errors import (
    CycleFailedError,
    CycleInProgressError,
    DatabaseUnavailableError,
    SlotTakenError,
    SonaStoreError,
)
from sona_store.learning.background import learn
from sona_store.learning.patterns import ExtractedPattern, extract_patterns
from sona_store.learning.routes import route_statistics
from sona_store.results import CycleResult

logger = logging.getLogger("sona_store.cycle")

# BLAS threads for the cycle's math (the window's embeddings, k-means, the
# LoRA step), set around that math only and restored after it. One: OpenBLAS's
# threads spin-wait for each other, so a product split over two threads stalls
# whenever another process holds one of the cores, and the cycle's products
# are small enough that a second thread gains little on an idle machine (both
# measured in benchmarks/README.md). None leaves the libraries' own setting.
CYCLE_BLAS_THREADS: int | None = 1

_blas_lock = threading.Lock()
_blas: dict[str, Any] = {"controller": None, "limiter": None, "active": 0}


@contextlib.contextmanager
def blas_threads(limit: int | None) -> Iterator[None]:
    """At most `limit` BLAS threads inside the block (None: no change). The
    limit is the BLAS library's, so it holds for the whole process while the
    block runs. Blocks in several threads at once (cycles of two stores)
    share one limit: the first sets it, the last restores what was there
    before the first, however they end. OpenBLAS (0.3.31) ignores a thread
    count set from another thread once the main thread has set one: a
    program that sets BLAS threads in its main thread and runs cycles in
    other threads (the scheduler's) keeps its own count for them."""
    if limit is None:
        yield
        return
    with _blas_lock:
        if _blas["active"] == 0:
            if _blas["controller"] is None:  # one scan of the loaded libraries
                from threadpoolctl import ThreadpoolController

                _blas["controller"] = ThreadpoolController()
            _blas["limiter"] = _blas["controller"].limit(limits=limit, user_api="blas")
        _blas["active"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas["active"] -= 1
            if _blas["active"] == 0:
                _blas["limiter"].restore_original_limits()
                _blas["limiter"] = None


class SlotPolicy(Protocol):
    """What differs between a cycle run by hand and a scheduled one: how the
    cycle lock is waited for, which slot the cycle is for, and whether that
    slot is due. Both decide under the lock, inside the cycle's transaction."""

    @property
    def trigger(self) -> str:
        """What the cycle record says started it."""

    @property
    def force(self) -> bool:
        """Run even below the minimum number of trajectories."""

    def take_lock(self, session: Session) -> None:
        """Hold the store's cycle lock, or raise CycleInProgressError."""

    def choose_slot(self, session: Session, now: dt.datetime) -> dt.datetime | None:
        """The slot this cycle is for (None: none), or SlotTakenError."""

    def is_due(self, slot: dt.datetime | None, now: dt.datetime) -> bool:
        """False: nothing to run now (the attempt returns no result)."""


@dataclass(frozen=True)
class GivenSlot:
    """A cycle run now: by hand (`manual`, or `forced` past the minimum), or for
    a slot the caller names (`slot`, refused with SlotTakenError if it has a
    cycle already). `wait`: wait for a running cycle rather than fail at once."""

    force: bool = False
    trigger: str = CycleTrigger.MANUAL
    slot: dt.datetime | None = None
    wait: bool = True

    def take_lock(self, session: Session) -> None:
        if not acquire_cycle_lock(session, wait=self.wait):
            raise CycleInProgressError("another cycle is running on this store")

    def choose_slot(self, session: Session, now: dt.datetime) -> dt.datetime | None:
        if self.slot is not None and cycles.slot_taken(session, self.slot):
            raise SlotTakenError(f"the slot {self.slot.isoformat()} already has a cycle")
        return self.slot

    def is_due(self, slot: dt.datetime | None, now: dt.datetime) -> bool:
        return True


@dataclass(frozen=True)
class CycleAttempt:
    """What one attempt did: the slot it was for (or the one not due yet),
    its cycle's record (None: not due) and the seconds it waited for the lock."""

    slot: dt.datetime | None
    result: CycleResult | None
    lock_wait: float


def attempt_cycle(
    engine: Engine, config: SonaConfig, policy: SlotPolicy, *, actor: str | None = None
) -> CycleAttempt:
    """One cycle attempt, in one transaction under the cycle lock: `policy`
    takes the lock and picks the slot; when it is due, the cycle runs. Raises
    CycleInProgressError (no lock), SlotTakenError (the slot has a cycle),
    DatabaseUnavailableError, and CycleFailedError after writing the failed
    record for any other failure."""
    actor = actor or cycles.default_actor()
    started_at = utcnow()
    clock = time.perf_counter()
    slot: dt.datetime | None = None
    try:
        with transaction(engine, immediate=True) as session:
            policy.take_lock(session)
            lock_wait = time.perf_counter() - clock
            # A cycle starts when it holds the lock, so no two records' spans overlap.
            started_at = utcnow()
            clock = time.perf_counter()
            slot = policy.choose_slot(session, started_at)
            if not policy.is_due(slot, started_at):
                return CycleAttempt(slot, None, lock_wait)
            record = cycle_body(
                session,
                config,
                force=policy.force,
                trigger=policy.trigger,
                actor=actor,
                started_at=started_at,
                scheduled_for=slot,
                clock=clock,
            )
        return CycleAttempt(slot, cycles.cycle_result(record), lock_wait)
    except Exception as exc:
        failure = cycle_failure(exc, engine, slot)
    fail_cycle(
        engine,
        config,
        failure,
        trigger=policy.trigger,
        actor=actor,
        started_at=started_at,
        scheduled_for=slot,
        clock=clock,
    )


def run_cycle(
    engine: Engine,
    config: SonaConfig,
    *,
    force: bool = False,
    trigger: str | None = None,
    actor: str | None = None,
    scheduled_for: dt.datetime | None = None,
    wait_for_lock: bool = True,
) -> CycleResult:
    """Run one cycle now (`attempt_cycle` with a GivenSlot) and return its
    record. Raises CycleInProgressError when `wait_for_lock` is False and
    another cycle holds the lock, SlotTakenError when `scheduled_for` already
    has a cycle, CycleFailedError on any other failure (after writing the
    failed record)."""
    policy = GivenSlot(
        force,
        trigger or (CycleTrigger.FORCED if force else CycleTrigger.MANUAL),
        scheduled_for,
        wait_for_lock,
    )
    result = attempt_cycle(engine, config, policy, actor=actor).result
    assert result is not None  # a given slot is always due
    return result


def cycle_failure(exc: Exception, engine: Engine, slot: dt.datetime | None) -> Exception:
    """The error a failed attempt records. Raises instead what is not a
    failure of the cycle: the lock was busy, the slot has a cycle already, or
    the database is down. A unique-key violation while a slot was claimed is
    asked of the database: if the slot now has a cycle, another writer took it
    (whatever the driver's wording)."""
    if isinstance(exc, CycleInProgressError | SlotTakenError | DatabaseUnavailableError):
        raise exc
    if slot is not None and is_unique_violation(exc) and _slot_taken(engine, slot):
        raise SlotTakenError(f"the slot {slot.isoformat()} already has a cycle") from exc
    return exc


def _slot_taken(engine: Engine, slot: dt.datetime) -> bool:
    try:
        with transaction(engine) as session:
            return cycles.slot_taken(session, slot)
    except SonaStoreError:  # the database went away: report the first failure
        return False


def fail_cycle(
    engine: Engine,
    config: SonaConfig,
    failure: BaseException,
    *,
    trigger: str,
    actor: str,
    started_at: dt.datetime,
    scheduled_for: dt.datetime | None,
    clock: float,
) -> NoReturn:
    """Record a cycle whose transaction raised as `failed`, then raise
    CycleFailedError (with the failed record's id) from the cause."""
    cycle_id = record_failed_cycle(
        engine,
        config,
        trigger=trigger,
        actor=actor,
        started_at=started_at,
        scheduled_for=scheduled_for,
        error=failure,
        elapsed=time.perf_counter() - clock,
    )
    raise CycleFailedError(
        f"cycle failed and was rolled back: {short_error(failure)}", cycle_id
    ) from failure


def cycle_body(
    session: Session,
    config: SonaConfig,
    *,
    force: bool,
    trigger: str,
    actor: str,
    started_at: dt.datetime,
    scheduled_for: dt.datetime | None,
    clock: float,
) -> Cycle:
    # 1. Enforce the minimum. Unlike the reference (defect 1), a skipped cycle
    #    consumes nothing: its trajectories wait for the next one.
    pending = trajectories.count_pending(session)
    skip_reason = None
    if pending == 0:
        skip_reason = "no trajectories to process"
    elif not force and pending < config.min_trajectories:
        skip_reason = (
            f"insufficient trajectories ({pending} < {config.min_trajectories} minimum, "
            "use force to bypass)"
        )
    # The head row is locked only at the end: micro-LoRA flushes update it too
    # and must not wait for a whole cycle (the cycle lock already keeps other
    # cycles and rollbacks out).
    head = state.get_head(session)
    if skip_reason and trigger == CycleTrigger.SCHEDULED:
        previous = cycles.coalescible_skip(session, head, config.to_dict())
        if previous is not None:
            return _add_idle_tick(previous, skip_reason, started_at, scheduled_for, clock)
    record = cycles.add_cycle(
        session,
        parent_cycle_id=head.cycle_id,
        trigger=trigger,
        status=CycleStatus.SKIPPED if skip_reason else CycleStatus.COMPLETED,
        reason=skip_reason,
        started_at=started_at,
        config=config.to_dict(),
        actor=actor,
        scheduled_for=scheduled_for,
        base_lora_version_id=head.base_lora_version_id,
        ewc_state_id=head.ewc_state_id,
    )
    if skip_reason:
        _finish(record, clock)
        return record

    # 2. Consume the batch; 3. cluster the retention window (batch included).
    record.trajectories_processed = trajectories.claim_pending(session, record.id)
    with blas_threads(CYCLE_BLAS_THREADS):
        _ids, embeddings, qualities, window_routes = trajectories.load_window_with_routes(
            session, config.retention_window, config.embedding_size
        )
        extracted = extract_patterns(
            embeddings,
            qualities,
            config.pattern_clusters,
            max_iterations=config.kmeans_max_iterations,
            convergence=config.kmeans_convergence,
            min_cluster_size=config.min_cluster_size,
            quality_threshold=config.pattern_quality_threshold,
        )
    pattern_ids = _insert_patterns(session, record.id, extracted)
    # What each pattern's members did per model route (the router's statistics).
    routes.insert_route_statistics(
        session,
        pattern_ids,
        route_statistics([p.members for p in extracted], window_routes, qualities),
    )
    record.window_size = len(qualities)
    record.patterns_extracted = len(extracted)

    # 4-6. Patterns -> signed targets -> EWC++-anchored base-LoRA step, as new
    #      immutable versions.
    lora, ewc = (
        state.load_base_lora(session, head.base_lora_version_id),
        state.load_ewc_state(session, head.ewc_state_id),
    )
    with blas_threads(CYCLE_BLAS_THREADS):
        step = learn(
            lora,
            ewc,
            extracted,
            lr=config.base_lora_lr,
            ewc_lambda=config.ewc_lambda,
            quality_threshold=config.quality_threshold,
        )
    if step is not None:
        record.base_lora_version_id = state.save_base_lora(
            session,
            step.lora,
            parent_id=head.base_lora_version_id,
            source="cycle",
            note=f"cycle {record.id}",
        )
        record.ewc_state_id = state.save_ewc_state(
            session, step.ewc_state, parent_id=head.ewc_state_id, task_boundary=step.task_boundary
        )
        record.ewc_updated = True

    # 7. The new state becomes current; the record is final.
    head = state.get_head(session, for_update=True)
    state.move_head(
        session,
        head,
        cycle_id=record.id,
        base_lora_version_id=record.base_lora_version_id,
        ewc_state_id=record.ewc_state_id,
    )
    _finish(record, clock)
    return record


def _add_idle_tick(
    record: Cycle,
    reason: str,
    started_at: dt.datetime,
    scheduled_for: dt.datetime | None,
    clock: float,
) -> Cycle:
    """One more idle scheduled tick on the skipped row of the tick before it:
    the count, the last tick's time, reason and slot (the schedule's anchor)."""
    record.attempts += 1
    record.last_attempt_at = started_at
    record.reason = reason
    record.scheduled_for = scheduled_for
    record.finished_at = utcnow()
    record.elapsed_seconds += time.perf_counter() - clock
    return record


def _finish(record: Cycle, clock: float) -> None:
    record.finished_at = utcnow()
    record.elapsed_seconds = time.perf_counter() - clock


def _insert_patterns(
    session: Session, cycle_id: int, extracted: list[ExtractedPattern]
) -> list[int]:
    """Insert the patterns; their ids, in order."""
    if not extracted:
        return []
    now = utcnow()
    inserted = session.execute(
        sa.insert(Pattern).returning(Pattern.id, sort_by_parameter_order=True),
        [
            {
                "cycle_id": cycle_id,
                "centroid": p.centroid,
                "cluster_size": p.cluster_size,
                "total_weight": p.total_weight,
                "avg_quality": p.avg_quality,
                "pattern_type": "general",
                "access_count": 0,
                "created_at": now,
            }
            for p in extracted
        ],
    )
    return list(inserted.scalars())


def record_failed_cycle(
    engine: Engine,
    config: SonaConfig,
    *,
    trigger: str,
    actor: str,
    started_at: dt.datetime,
    error: BaseException | str,
    elapsed: float = 0.0,
    scheduled_for: dt.datetime | None = None,
) -> int | None:
    """Write a `failed` cycle record in a transaction of its own. Returns its id,
    or None when the database cannot take it either (the caller may retry later)."""
    if isinstance(error, str):
        text = error
    elif isinstance(error, SQLAlchemyError):  # never the SQL and its parameters
        text = f"{type(error).__name__}: {short_error(error)}"
    else:
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
    try:
        with transaction(engine, immediate=True) as session:
            head = state.get_head(session)
            taken = scheduled_for is not None and cycles.slot_taken(session, scheduled_for)
            record = cycles.add_cycle(
                session,
                parent_cycle_id=head.cycle_id,
                trigger=trigger,
                status=CycleStatus.FAILED,
                reason="the cycle raised; nothing of it was kept",
                error=text,
                started_at=started_at,
                finished_at=utcnow(),
                elapsed_seconds=elapsed,
                config=config.to_dict(),
                actor=actor,
                scheduled_for=None if taken else scheduled_for,
            )
            return record.id
    except Exception as exc:  # the database is down too: report, do not mask the cause
        # INFO: the caller reports the cycle's failure (cycle_id None says it
        # went unrecorded); a second line would only repeat the cause.
        logger.info(
            "could not record the failed cycle in %s: %s", mask_url(engine.url), short_error(exc)
        )
        return None


__all__ = [
    "CycleAttempt",
    "CycleFailedError",
    "GivenSlot",
    "SlotPolicy",
    "SlotTakenError",
    "attempt_cycle",
    "record_failed_cycle",
    "run_cycle",
]
