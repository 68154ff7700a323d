"""Counters for `SonaStore.stats()`: the reference's statistics keys with
their meaning in a persistent store, plus the store's own."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db import retention, state, trajectories
from sona_store.db.models import Cycle, EwcTaskMemory, LoraVersion, Pattern, Trajectory


def _count(session: Session, model: type, *where: Any) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def store_stats(session: Session) -> dict[str, Any]:
    head = state.get_head(session)
    return {
        # The reference's keys. "buffered" means recorded and waiting for a cycle
        # (pending). Its trajectories_dropped and buffer_success_rate are not kept:
        # nothing is ever dropped here, so they could only be constants.
        "trajectories_recorded": trajectories.count_all(session),
        "trajectories_buffered": trajectories.count_pending(session),
        "patterns_stored": _count(
            session, Pattern, Pattern.cycle_id == head.cycle_id, Pattern.pruned_at.is_(None)
        ),
        "patterns_learned": _count(session, Pattern),
        "ewc_tasks": _count(
            session, EwcTaskMemory, EwcTaskMemory.ewc_state_id == head.ewc_state_id
        ),
        # The store's own.
        "trajectories_consumed": _count(
            session, Trajectory, Trajectory.consumed_by_cycle_id.is_not(None)
        ),
        "trajectories_vectors_dropped": retention.count_dropped(session),
        "cycles": _count(session, Cycle),
        "head_cycle_id": head.cycle_id,
        "base_lora_version_id": head.base_lora_version_id,
        "micro_lora_version_id": head.micro_lora_version_id,
        "lora_versions": _count(session, LoraVersion),
        "ewc_state_id": head.ewc_state_id,
    }
