"""Rollback and restore: moving the head, never rewriting history.

Invariant: a cycle is `completed` exactly when it lies on the current line of
history (the head cycle and its ancestors); the ones cut off are
`rolled_back`. Rolling back cycle C makes C's parent state current and cuts C
and every later completed cycle off; restoring X makes X's state current
again and cuts off whatever the current line has that X's does not. Both run
under the cycle lock in one transaction and append an audit row, like a git
reflog: every earlier head stays reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sona_store.db import cycles, trajectories
from sona_store.db import retention as retention_db
from sona_store.db.engine import transaction
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.models import Cycle, LoraVersion, StoreHead, Trajectory
from sona_store.db.models import EwcState as EwcStateRow
from sona_store.db.quarantines import quarantined
from sona_store.enums import CycleStatus
from sona_store.errors import RollbackError, VectorsDroppedError
from sona_store.services.head import Pointers, lock_head, move_head


@dataclass(frozen=True)
class HeadMove:
    """What a rollback or restore did."""

    audit_id: int
    action: str
    cycle_id: int
    from_cycle_id: int | None
    to_cycle_id: int | None
    cycles_rolled_back: list[int] = field(default_factory=list)
    cycles_restored: list[int] = field(default_factory=list)
    trajectories_requeued: int = 0


def _state_before(session: Session, cycle: Cycle) -> tuple[int, int]:
    """The base-LoRA version and EWC++ state that were current when `cycle` began:
    the parents of what it wrote, or what it referenced if it learned nothing."""
    if not cycle.ewc_updated:
        return _both(cycle, cycle.base_lora_version_id, cycle.ewc_state_id)
    lora = session.get(LoraVersion, cycle.base_lora_version_id)
    ewc = session.get(EwcStateRow, cycle.ewc_state_id)
    return _both(cycle, lora.parent_id if lora else None, ewc.parent_id if ewc else None)


def _both(cycle: Cycle, lora_id: int | None, ewc_id: int | None) -> tuple[int, int]:
    if lora_id is None or ewc_id is None:  # every cycle references (or made) both
        raise RollbackError(f"cycle {cycle.id} lacks its base-LoRA or EWC++ state reference")
    return lora_id, ewc_id


def _cycle_pointers(pointers: Pointers) -> Pointers:
    """The pointers a rollback's audit row names (the micro-LoRA's is not
    one a rollback moves)."""
    return {name: pointers[name] for name in ("cycle_id", "base_lora_version_id", "ewc_state_id")}


def _refuse_unless(cycle: Cycle, wanted: str, action: str) -> None:
    if cycle.status == wanted:
        return
    if cycle.status in (CycleStatus.SKIPPED, CycleStatus.FAILED):
        raise RollbackError(
            f"cycle {cycle.id} was {cycle.status}: it changed nothing, so there is nothing to {action}"
        )
    if action == "roll back":
        raise RollbackError(
            f"cycle {cycle.id} is already rolled back; use restore to bring it back"
        )
    raise RollbackError(
        f"cycle {cycle.id} is already current (on the head's line); nothing to restore"
    )


def _completed_from(session: Session, first_id: int) -> list[int]:
    """Completed cycles with id >= first_id: the current line from there on."""
    return list(
        session.scalars(
            sa.select(Cycle.id)
            .where(Cycle.status == CycleStatus.COMPLETED, Cycle.id >= first_id)
            .order_by(Cycle.id)
        )
    )


def _set_status(session: Session, cycle_ids: list[int], status: str) -> None:
    session.execute(
        sa.update(Cycle)
        .where(Cycle.id.in_(cycle_ids))
        .values(status=status)
        .execution_options(synchronize_session=False)
    )


def _move_and_audit(
    session: Session,
    head: StoreHead,
    *,
    action: str,
    cycle_id: int,
    actor: str,
    reason: str | None,
    cut: list[int],
    restored: list[int],
    requeued: int | None,
    to: dict[str, int | None],
) -> HeadMove:
    """Move the head to `to` (cycle, base LoRA, EWC++ pointers) with the audit
    row saying who, why, from where and what was cut or restored."""

    def details(before: Pointers, after: Pointers) -> dict[str, Any]:
        written: dict[str, Any] = {
            "from": _cycle_pointers(before),
            "to": _cycle_pointers(after),
            "cycles_rolled_back": cut,
        }
        if restored:
            written["cycles_restored"] = restored
        if requeued is not None:
            written.update(requeue=True, trajectories_requeued=requeued)
        return written

    change = move_head(
        session,
        head,
        to,
        action=action,
        actor=actor,
        reason=reason,
        details=details,
        cycle_id=cycle_id,
    )
    return HeadMove(
        audit_id=change.audit_id,
        action=action,
        cycle_id=cycle_id,
        from_cycle_id=change.before["cycle_id"],
        to_cycle_id=change.after["cycle_id"],
        cycles_rolled_back=cut,
        cycles_restored=restored,
        trajectories_requeued=requeued or 0,
    )


def _refuse_if_requeued(session: Session, chain: list[Cycle]) -> None:
    """A cycle whose batch a rollback requeued no longer owns it: its state,
    made current again, would count those trajectories twice (when the next
    cycle consumes them) or lose them (when another cycle already has)."""
    counted = session.execute(
        sa.select(Trajectory.consumed_by_cycle_id, sa.func.count())
        .where(Trajectory.consumed_by_cycle_id.in_([c.id for c in chain]))
        .group_by(Trajectory.consumed_by_cycle_id)
    )
    owned: dict[int | None, int] = {cycle_id: count for cycle_id, count in counted}
    for cycle in chain:
        if owned.get(cycle.id, 0) != cycle.trajectories_processed:
            raise RollbackError(
                f"cycle {cycle.id}'s trajectories were requeued by a rollback "
                f"(--requeue) or a quarantine: restoring it would learn from them twice "
                f"or lose them"
            )
    held = session.execute(
        sa.select(Trajectory.consumed_by_cycle_id, sa.func.count())
        .where(
            Trajectory.consumed_by_cycle_id.in_([c.id for c in chain]),
            quarantined(Trajectory.id),
        )
        .group_by(Trajectory.consumed_by_cycle_id)
    ).first()
    if held is not None:
        raise RollbackError(
            f"cycle {held[0]} learned from {held[1]} quarantined trajectories: "
            f"release their quarantine before restoring it"
        )


def refuse_if_vectors_dropped(
    session: Session,
    cycle_ids: list[int],
    action: str,
    *,
    remedy: str = "Roll back without --requeue",
) -> None:
    """Requeued trajectories feed the next cycle, which needs their vectors:
    refuse, naming the retention policy, when gc deleted some of them."""
    dropped = retention_db.dropped_count(session, cycle_ids)
    if dropped:
        raise vectors_dropped_error(
            session,
            f"cannot {action} the trajectories of cycle(s) {', '.join(map(str, cycle_ids))}: "
            f"{dropped} of them",
            remedy,
        )


def vectors_dropped_error(session: Session, what: str, remedy: str) -> VectorsDroppedError:
    """The one error for work that needs vectors gc deleted: names the policy
    of the last gc and how to bring the vectors back."""
    gc = retention_db.last_gc(session)
    details = gc.details if gc is not None else {}
    policy = retention_db.Policy(**{**(details.get("policy") or {}), "archive_dir": None})
    where = (
        f"gc audit #{gc.id} ran under the retention policy: {policy.describe()}"
        if gc is not None
        else "gc deleted them"
    )
    return VectorsDroppedError(
        f"{what} no longer have their vectors ({where}). {remedy}, or put the vectors "
        "back first: sona-store ingest --restore ARCHIVE"
    )


def rollback(
    engine: Engine,
    cycle_id: int,
    *,
    actor: str,
    reason: str | None = None,
    requeue: bool = False,
) -> HeadMove:
    """Make current what was current before `cycle_id`; mark it and every later
    completed cycle rolled back. With `requeue`, their trajectories become
    pending again; otherwise they stay consumed by the rolled-back cycles, out
    of every future window."""
    with transaction(engine, immediate=True) as session:
        acquire_cycle_lock(session, wait=True)
        cycle = cycles.get_cycle(session, cycle_id, for_update=True)
        _refuse_unless(cycle, CycleStatus.COMPLETED, "roll back")
        head = lock_head(session, cycle_lock=False)  # held already
        if requeue:
            refuse_if_vectors_dropped(session, _completed_from(session, cycle.id), "requeue")
        cut, to = cut_from(session, cycle)
        requeued = trajectories.requeue(session, cut) if requeue else None
        return _move_and_audit(
            session,
            head,
            action="rollback",
            cycle_id=cycle.id,
            actor=actor,
            reason=reason,
            cut=cut,
            restored=[],
            requeued=requeued,
            to=to,
        )


def cut_from(session: Session, cycle: Cycle) -> tuple[list[int], dict[str, int | None]]:
    """Mark `cycle` (completed) and every later completed cycle rolled back;
    returns their ids and the head pointers of the state before `cycle`.
    The caller moves the head (a rollback, or a quarantine)."""
    cut = _completed_from(session, cycle.id)
    _set_status(session, cut, CycleStatus.ROLLED_BACK)
    lora_id, ewc_id = _state_before(session, cycle)
    return cut, {
        "cycle_id": cycle.parent_cycle_id,
        "base_lora_version_id": lora_id,
        "ewc_state_id": ewc_id,
    }


def restore(engine: Engine, cycle_id: int, *, actor: str, reason: str | None = None) -> HeadMove:
    """Make a rolled-back cycle's state current again (undoing a rollback)."""
    with transaction(engine, immediate=True) as session:
        acquire_cycle_lock(session, wait=True)
        target = cycles.get_cycle(session, cycle_id, for_update=True)
        _refuse_unless(target, CycleStatus.ROLLED_BACK, "restore")
        head = lock_head(session, cycle_lock=False)  # held already
        # Walk up from the target to where it joins the current line.
        chain = [target]
        fork = target.parent_cycle_id
        while fork is not None:
            parent = session.get(Cycle, fork)
            if parent is None:  # parent_cycle_id is a foreign key
                raise RollbackError(f"cycle {fork}, a parent in the chain, is missing")
            if parent.status == CycleStatus.COMPLETED:
                break
            chain.append(parent)
            fork = parent.parent_cycle_id
        cut = _completed_from(session, (fork or 0) + 1)
        restored = sorted(c.id for c in chain)
        _refuse_if_requeued(session, chain)
        _set_status(session, cut, CycleStatus.ROLLED_BACK)
        _set_status(session, restored, CycleStatus.COMPLETED)
        return _move_and_audit(
            session,
            head,
            action="restore",
            cycle_id=target.id,
            actor=actor,
            reason=reason,
            cut=cut,
            restored=restored,
            requeued=None,
            to={
                "cycle_id": target.id,
                "base_lora_version_id": target.base_lora_version_id,
                "ewc_state_id": target.ewc_state_id,
            },
        )
