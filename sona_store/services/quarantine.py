"""Quarantine: undo a bad batch of trajectories in every learned tier, as if it
had never been recorded; and release, which undoes a quarantine.

One transaction under the cycle lock and the head row's lock (so no cycle,
rollback or micro-LoRA flush interleaves), one audit row:

1. the selected trajectories become members of a new quarantine: kept, but
   never in a later retention window nor applied to the micro-LoRA;
2. base tier: the earliest cycle on the head's line that consumed one of them
   and every later one are rolled back, as `rollback` does; their other
   trajectories are requeued for the next cycle;
3. micro tier: the head's micro-LoRA line is replayed without them
   (`micro_replay`); the old versions stay in history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import Session

from sona_store.config import SonaConfig
from sona_store.db import cycles, quarantines, state
from sona_store.db.engine import transaction
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.models import Cycle, Trajectory
from sona_store.db.quarantines import Selection, format_ranges, id_ranges
from sona_store.db.types import utcnow
from sona_store.enums import CycleStatus
from sona_store.errors import QuarantineError
from sona_store.services.head import lock_head, move_head, pointers
from sona_store.services.micro_replay import replay_without_quarantined
from sona_store.services.rollback import cut_from, refuse_if_vectors_dropped


@dataclass(frozen=True)
class QuarantineResult:
    """What a quarantine changed."""

    quarantine_id: int
    audit_id: int
    trajectories: int
    cycles_rolled_back: list[int] = field(default_factory=list)
    trajectories_requeued: int = 0
    micro_versions_replayed: int = 0
    micro_versions_written: int = 0
    micro_signals_removed: int = 0
    micro_lora_distance: float = 0.0  # Frobenius norm of the micro-LoRA `up` change
    base_lora_distance: float = 0.0  # ... of the base LoRA's `up` (all layers)
    from_head: dict[str, int | None] = field(default_factory=dict)
    to_head: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ReleaseResult:
    """What a release changed."""

    quarantine_id: int
    audit_id: int
    trajectories: int
    pending_again: int  # of them, now waiting for the next cycle


def _distance(session: Session, a: int | None, b: int | None) -> float:
    if a == b or a is None or b is None:
        return 0.0
    up_a = state.load_lora(session, a).up.astype(np.float64)
    up_b = state.load_lora(session, b).up.astype(np.float64)
    return float(np.linalg.norm(up_a - up_b))


def _roll_back_base(
    session: Session, ids: list[int]
) -> tuple[list[int], dict[str, int | None], int]:
    """Roll back from the earliest completed cycle that consumed one of `ids`;
    returns (cycles cut, head pointers to move to, trajectories requeued).
    Every trajectory the cut cycles consumed becomes unconsumed: the others
    pending again, the quarantined ones pending once released."""
    consumed_by = quarantines.consumers(session, ids)
    first = session.scalar(
        sa.select(sa.func.min(Cycle.id)).where(
            Cycle.id.in_(set(consumed_by.values())), Cycle.status == CycleStatus.COMPLETED
        )
    )
    if first is None:
        return [], {}, 0
    cut, to = cut_from(session, cycles.get_cycle(session, first, for_update=True))
    # The cut cycles' trajectories are requeued (the quarantined ones on release):
    # the next cycle needs their vectors.
    refuse_if_vectors_dropped(
        session, cut, "quarantine (it requeues)", remedy="Quarantine a later batch only"
    )
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        sa.update(Trajectory)
        .where(Trajectory.consumed_by_cycle_id.in_(cut))
        .values(consumed_by_cycle_id=None)
        .execution_options(synchronize_session=False)
    )
    taken_back = sum(1 for cycle_id in consumed_by.values() if cycle_id in set(cut))
    return cut, to, result.rowcount - taken_back


def quarantine(
    engine: Engine,
    config: SonaConfig,
    selection: Selection,
    *,
    reason: str,
    actor: str,
) -> QuarantineResult:
    """Quarantine the trajectories `selection` names (see the module's doc).
    Nothing matching, or any of them already quarantined, is an error and
    nothing is written."""
    if not isinstance(reason, str) or not reason.strip():
        raise QuarantineError("a quarantine needs a reason, for the audit trail")
    with transaction(engine, immediate=True) as session:
        # Locked before anything is read: a micro-LoRA flush in flight commits
        # first, and every later one applies to the replayed head.
        head = lock_head(session, cycle_lock=True)
        ids = quarantines.select_ids(session, selection)
        if not ids:
            raise QuarantineError(f"no trajectory matches {selection.describe()}: nothing to do")
        held = quarantines.active_quarantines_of(session, ids)
        if held:
            named = ", ".join(f"{n} in quarantine {q}" for q, n in sorted(held.items()))
            raise QuarantineError(
                f"{sum(held.values())} of the {len(ids)} selected trajectories are already "
                f"quarantined ({named}): release it first, or narrow the selection"
            )
        before = pointers(head)
        row = quarantines.add(session, actor=actor, reason=reason, selection=selection, ids=ids)
        cut, to, requeued = _roll_back_base(session, ids)
        micro = replay_without_quarantined(session, config, head.micro_lora_version_id, row.id, ids)
        if micro is not None:
            to["micro_lora_version_id"] = micro.head_version_id
        after = {**before, **to}
        result: dict[str, Any] = {
            "quarantine_id": row.id,
            "trajectories": len(ids),
            "cycles_rolled_back": cut,
            "trajectories_requeued": requeued,
            "micro_versions_replayed": micro.versions_replayed if micro else 0,
            "micro_versions_written": micro.versions_written if micro else 0,
            "micro_signals_removed": micro.signals_removed if micro else 0,
            "micro_lora_distance": _distance(
                session, before["micro_lora_version_id"], after["micro_lora_version_id"]
            ),
            "base_lora_distance": _distance(
                session, before["base_lora_version_id"], after["base_lora_version_id"]
            ),
        }
        change = move_head(
            session,
            head,
            to,
            action="quarantine",
            actor=actor,
            reason=reason,
            cycle_id=cut[0] if cut else None,
            details=lambda from_, to_: {
                **result,
                "selection": selection.to_dict(),
                "trajectory_ids": format_ranges(id_ranges(ids), limit=50),
                "from": from_,
                "to": to_,
            },
        )
        return QuarantineResult(
            audit_id=change.audit_id, from_head=change.before, to_head=change.after, **result
        )


def release(
    engine: Engine, quarantine_id: int, *, actor: str, reason: str | None = None
) -> ReleaseResult:
    """End a quarantine: its trajectories are eligible again. Those no cycle
    holds wait for the next cycle; signals taken out of the micro-LoRA (or
    never applied) are applied by the next flush. Rolled-back cycles stay
    rolled back, and the replayed micro-LoRA versions stay current."""
    with transaction(engine, immediate=True) as session:
        acquire_cycle_lock(session, wait=True)
        row = quarantines.get(session, quarantine_id, for_update=True)
        if row.released_at is not None:
            raise QuarantineError(
                f"quarantine {quarantine_id} was already released at "
                f"{row.released_at:%Y-%m-%d %H:%M:%S} by {row.released_by}"
            )
        ids = quarantines.members(session, quarantine_id)
        row.released_at = utcnow()
        row.released_by = actor
        row.release_reason = reason
        session.flush()
        pending = 0
        for chunk in quarantines.chunks(ids):
            pending += (
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(Trajectory)
                    .where(
                        Trajectory.id.in_(chunk),
                        Trajectory.consumed_by_cycle_id.is_(None),
                        ~quarantines.quarantined(Trajectory.id),
                    )
                )
                or 0
            )
        event = cycles.add_audit(
            session,
            actor=actor,
            action="release",
            reason=reason,
            details={
                "quarantine_id": quarantine_id,
                "trajectories": len(ids),
                "pending_again": pending,
                "trajectory_ids": format_ranges(id_ranges(ids), limit=50),
            },
        )
        return ReleaseResult(quarantine_id, event.id, len(ids), pending)
