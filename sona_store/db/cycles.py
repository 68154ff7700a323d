"""Cycle records and the audit log: writing them and reading history."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store import enums
from sona_store.db.models import AuditEvent, Cycle, StoreHead
from sona_store.db.types import utcnow
from sona_store.enums import CycleStatus, CycleTrigger
from sona_store.errors import CycleNotFoundError, InvalidInputError
from sona_store.results import CycleResult


def default_actor() -> str:
    """Who is acting, for the audit trail: OS user, host and process."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def cycle_result(row: Cycle) -> CycleResult:
    """A cycle row as the API returns it."""
    return CycleResult(
        cycle_id=row.id,
        status=row.status,
        reason=row.reason,
        trajectories_processed=row.trajectories_processed,
        patterns_extracted=row.patterns_extracted,
        elapsed=row.elapsed_seconds,
        trigger=row.trigger,
        started_at=row.started_at,
        finished_at=row.finished_at,
        ewc_updated=row.ewc_updated,
        window_size=row.window_size,
        error=row.error,
        parent_cycle_id=row.parent_cycle_id,
        scheduled_for=row.scheduled_for,
        actor=row.actor,
        base_lora_version_id=row.base_lora_version_id,
        ewc_state_id=row.ewc_state_id,
        config=row.config,
        attempts=row.attempts,
        last_attempt_at=row.last_attempt_at,
    )


def add_cycle(session: Session, **fields: Any) -> Cycle:
    cycle = Cycle(**fields)
    session.add(cycle)
    session.flush()
    return cycle


def get_cycle(session: Session, cycle_id: int, *, for_update: bool = False) -> Cycle:
    statement = sa.select(Cycle).where(Cycle.id == cycle_id)
    if for_update:
        statement = statement.with_for_update()
    cycle = session.scalars(statement).one_or_none()
    if cycle is None:
        raise CycleNotFoundError(f"no cycle with id {cycle_id}")
    return cycle


def slot_taken(session: Session, slot: dt.datetime) -> bool:
    return session.scalar(sa.select(Cycle.id).where(Cycle.scheduled_for == slot)) is not None


def coalescible_skip(session: Session, head: StoreHead, config: dict[str, Any]) -> Cycle | None:
    """The last cycle, if it is a skipped scheduled tick that another idle tick
    may join: no cycle came after it, the head is what it was then (no
    rollback or LoRA import moved it) and the configuration is the same."""
    last = last_cycle(session)
    if (
        last is not None
        and last.trigger == CycleTrigger.SCHEDULED
        and last.status == CycleStatus.SKIPPED
        and last.parent_cycle_id == head.cycle_id
        and last.base_lora_version_id == head.base_lora_version_id
        and last.ewc_state_id == head.ewc_state_id
        and last.config == config
    ):
        return last
    return None


def last_cycle(session: Session) -> Cycle | None:
    return session.scalars(sa.select(Cycle).order_by(Cycle.id.desc()).limit(1)).one_or_none()


def history(
    session: Session,
    limit: int | None = None,
    *,
    status: Iterable[str] | None = None,
    since: dt.datetime | None = None,
) -> list[CycleResult]:
    """Cycle records, newest first; `status`: only these statuses; `since`: only
    cycles active at or after that moment (a coalesced row by its last tick)."""
    statement = sa.select(Cycle).order_by(Cycle.id.desc())
    if status is not None:
        wanted = sorted({enums.parse(CycleStatus, s, "status").value for s in status})
        statement = statement.where(Cycle.status.in_(wanted))
    if since is not None:
        if since.tzinfo is None:
            raise InvalidInputError("since must be a timezone-aware datetime")
        statement = statement.where(
            sa.func.coalesce(Cycle.last_attempt_at, Cycle.started_at) >= since
        )
    if limit is not None:
        statement = statement.limit(limit)
    return [cycle_result(row) for row in session.scalars(statement)]


def add_audit(session: Session, *, actor: str, action: str, **fields: Any) -> AuditEvent:
    event = AuditEvent(actor=actor, action=action, at=utcnow(), **fields)
    session.add(event)
    session.flush()
    return event


# -- the schedule's queries (the schedule itself: services/scheduling.py) -------------


def last_scheduled_slot(session: Session) -> dt.datetime | None:
    return session.scalar(sa.select(sa.func.max(Cycle.scheduled_for)))
