"""Moving the head by hand: the one way a rollback, a restore, a quarantine, a
LoRA import and `lora-use` change what is current. Each move runs inside the
caller's transaction, with the head row locked, and appends one audit row
saying who, why, and the pointers before and after, so every earlier head
stays reachable (like a git reflog). Cycles move the head too, but a cycle's
own record is its audit, so `cycle.cycle_body` calls `state.move_head`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from sona_store.db import cycles, state
from sona_store.db.locks import acquire_cycle_lock
from sona_store.db.models import StoreHead

Pointers = dict[str, int | None]


def pointers(head: StoreHead) -> Pointers:
    """All four head pointers, by column name."""
    return {
        "cycle_id": head.cycle_id,
        "base_lora_version_id": head.base_lora_version_id,
        "micro_lora_version_id": head.micro_lora_version_id,
        "ewc_state_id": head.ewc_state_id,
    }


def lock_head(session: Session, *, cycle_lock: bool) -> StoreHead:
    """The head row, locked for the move. `cycle_lock`: take the store's cycle
    lock first, as every move of the cycle or base-LoRA pointer must (cycles
    move those); a micro-LoRA move only waits for the head row, as flushes do."""
    if cycle_lock:
        acquire_cycle_lock(session, wait=True)
    return state.get_head(session, for_update=True)


@dataclass(frozen=True)
class HeadChange:
    """One audited move: its audit row and the pointers on either side."""

    audit_id: int
    before: Pointers
    after: Pointers


def move_head(
    session: Session,
    head: StoreHead,
    to: Mapping[str, int | None],
    *,
    action: str,
    actor: str,
    reason: str | None,
    details: Callable[[Pointers, Pointers], dict[str, Any]],
    cycle_id: int | None = None,
    links_cycles: bool = True,
) -> HeadChange:
    """Move `head` (locked, see `lock_head`) to the pointers in `to` (none:
    the head stays, the audit row is still written) and append the audit row,
    its details built from the pointers before and after. `links_cycles`: the
    row's cycle columns say which cycle the action was about (`cycle_id`) and
    the head cycle before and after; a LoRA move leaves them empty."""
    before = pointers(head)
    if to:
        state.move_head(session, head, **to)
    after = pointers(head)
    columns: dict[str, int | None] = (
        {
            "cycle_id": cycle_id,
            "from_cycle_id": before["cycle_id"],
            "to_cycle_id": after["cycle_id"],
        }
        if links_cycles
        else {}
    )
    event = cycles.add_audit(
        session,
        actor=actor,
        action=action,
        reason=reason,
        details=details(before, after),
        **columns,
    )
    return HeadChange(event.id, before, after)
