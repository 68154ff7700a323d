"""Retention in SQL: the stored policy, which trajectories' vectors gc may
delete, reading them for the archive, and deleting them.

A trajectory's vectors (its `trajectory_vectors` row and its steps) may go
once nothing the store can still do needs them:
- it is consumed, and its micro-LoRA signal was applied (a ledger row);
- it is outside the retention window the next cycle would read, and also
  outside the window it would read after a rollback within the horizon;
- with a horizon of N cycles: its cycle is older than the N-th most recent
  completed cycle (so `rollback --requeue` of any of those N still works);
- with an age: it was recorded more than that long ago.
Its `trajectories` row stays, marked by `vectors_dropped_at`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.models import (
    AuditEvent,
    Cycle,
    MicroLoraSignal,
    RetentionPolicy,
    Trajectory,
    TrajectoryStep,
    TrajectoryVectors,
)
from sona_store.enums import CycleStatus
from sona_store.errors import InvalidInputError

CHUNK = 1000  # trajectories a statement (bound ids) or an archive read
DAY_S = 86400.0
MAX_AGE_S = 1e6 * 365 * DAY_S  # a million years: beyond, no timestamp is older


@dataclass(frozen=True)
class Policy:
    """What gc keeps. A limit left None is not applied; with neither set, gc
    deletes nothing (the store keeps every vector, as before retention)."""

    max_age_seconds: float | None = None
    horizon_cycles: int | None = None
    archive_dir: str | None = None

    def __post_init__(self) -> None:
        age, horizon = self.max_age_seconds, self.horizon_cycles
        if age is not None and (
            isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age <= MAX_AGE_S
        ):
            raise InvalidInputError(
                f"the age limit must be a number of seconds from 0 to {MAX_AGE_S:g}, got {age!r}"
            )
        if horizon is not None and (
            isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0
        ):
            raise InvalidInputError(
                f"the horizon must be a whole number of cycles >= 0, got {horizon!r}"
            )

    @property
    def deletes_anything(self) -> bool:
        return self.max_age_seconds is not None or self.horizon_cycles is not None

    def describe(self) -> str:
        """'older than 7 days, beyond 24 cycles', as messages name it."""
        if not self.deletes_anything:
            return "no retention policy (every vector is kept)"
        parts = []
        if self.max_age_seconds is not None:
            parts.append(f"older than {self.max_age_seconds / DAY_S:g} days")
        if self.horizon_cycles is not None:
            plural = "" if self.horizon_cycles == 1 else "s"
            parts.append(f"beyond a rollback horizon of {self.horizon_cycles} cycle{plural}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_age_seconds": self.max_age_seconds,
            "horizon_cycles": self.horizon_cycles,
            "archive_dir": self.archive_dir,
        }


def read_policy(session: Session) -> Policy:
    row = session.get(RetentionPolicy, 1)
    if row is None:
        return Policy()
    return Policy(row.max_age_seconds, row.horizon_cycles, row.archive_dir)


def write_policy(session: Session, policy: Policy, *, actor: str, now: dt.datetime) -> None:
    """Replace the policy (None of everything: remove it). The caller audits."""
    row = session.get(RetentionPolicy, 1, with_for_update=True)
    if not policy.deletes_anything and policy.archive_dir is None:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = RetentionPolicy(id=1)
        session.add(row)
    row.max_age_seconds = policy.max_age_seconds
    row.horizon_cycles = policy.horizon_cycles
    row.archive_dir = policy.archive_dir
    row.updated_at = now
    row.updated_by = actor


# -- what may go ------------------------------------------------------------------


def horizon_floor(session: Session, horizon: int | None) -> int | None:
    """The oldest cycle the horizon protects (its trajectories and every later
    cycle's keep their vectors); None: the horizon protects nothing."""
    if not horizon:
        return None
    recent = session.scalars(
        sa.select(Cycle.id)
        .where(Cycle.status == CycleStatus.COMPLETED)
        .order_by(Cycle.id.desc())
        .limit(horizon)
    ).all()
    return recent[-1] if recent else None


def window_edge(session: Session, window: int, below: int | None) -> tuple[int, int] | None:
    """(cycle, id) of the oldest trajectory of the retention window read by a
    cycle whose parent is the last completed cycle before `below` (None: the
    head), i.e. the window after rolling back the horizon; None when that
    window is not full (every such trajectory is in it)."""
    statement = (
        sa.select(Trajectory.consumed_by_cycle_id, Trajectory.id)
        .join(Cycle, Cycle.id == Trajectory.consumed_by_cycle_id)
        .where(Cycle.status == CycleStatus.COMPLETED, Trajectory.vectors_dropped_at.is_(None))
        .order_by(Cycle.id.desc(), Trajectory.id.desc())
        .offset(window - 1)
        .limit(1)
    )
    if below is not None:
        statement = statement.where(Cycle.id < below)
    row = session.execute(statement).first()
    return None if row is None or row[0] is None else (row[0], row[1])


def droppable_ids(
    session: Session, *, window: int, policy: Policy, now: dt.datetime
) -> tuple[np.ndarray, dict[str, Any]]:
    """Ids (ascending) of the trajectories whose vectors gc may delete under
    `policy`, and what bounded them (for the audit row)."""
    if not policy.deletes_anything:
        return np.zeros(0, dtype=np.int64), {}
    floor = horizon_floor(session, policy.horizon_cycles)
    edge = window_edge(session, window, floor)
    t, c = Trajectory, Cycle
    applied = sa.exists().where(MicroLoraSignal.trajectory_id == t.id)
    # Rows below the oldest stored vector lost theirs already: skip them fast.
    oldest_kept = session.scalar(sa.select(sa.func.min(TrajectoryVectors.trajectory_id)))
    if oldest_kept is None:
        return np.zeros(0, dtype=np.int64), {}
    outside_window = c.status != CycleStatus.COMPLETED
    if edge is not None:
        edge_cycle, edge_id = edge
        outside_window = sa.or_(
            outside_window,
            t.consumed_by_cycle_id < edge_cycle,
            sa.and_(t.consumed_by_cycle_id == edge_cycle, t.id < edge_id),
        )
    statement = (
        sa.select(t.id)
        .join(c, c.id == t.consumed_by_cycle_id)
        .where(t.id >= oldest_kept, t.vectors_dropped_at.is_(None), outside_window, applied)
        .order_by(t.id)
    )
    cutoff = None
    if floor is not None:
        statement = statement.where(t.consumed_by_cycle_id < floor)
    if policy.max_age_seconds is not None:
        cutoff = now - dt.timedelta(seconds=policy.max_age_seconds)
        statement = statement.where(t.created_at < cutoff)
    ids = np.fromiter(session.scalars(statement), dtype=np.int64)
    bounds = {
        "horizon_floor_cycle_id": floor,
        "window_edge": list(edge) if edge is not None else None,
        "recorded_before": cutoff.isoformat() if cutoff is not None else None,
    }
    return ids, bounds


def chunks(ids: np.ndarray, size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size].tolist()


# -- the archive --------------------------------------------------------------------


def archive_items(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    """Trajectories `ids` (ascending) in the ingest format, with their `id`.
    Vectors are written as the exact float64 values of their float32 entries,
    so ingesting them gives back the same bits."""
    rows = session.execute(
        sa.select(
            Trajectory.id,
            Trajectory.quality,
            Trajectory.latency_us,
            Trajectory.model_route,
            Trajectory.context_ids,
            TrajectoryVectors.query_embedding,
        )
        .join(TrajectoryVectors, TrajectoryVectors.trajectory_id == Trajectory.id)
        .where(Trajectory.id.in_(ids))
        .order_by(Trajectory.id)
    ).all()
    if [r.id for r in rows] != ids:
        raise RuntimeError("a trajectory to archive has no stored vectors")
    steps: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for s in session.execute(
        sa.select(TrajectoryStep)
        .where(TrajectoryStep.trajectory_id.in_(ids))
        .order_by(TrajectoryStep.trajectory_id, TrajectoryStep.step_index)
    ).scalars():
        step: dict[str, Any] = {
            "activations": s.activations.tolist(),
            "attention_weights": s.attention_weights.tolist(),
            "reward": s.reward,
        }
        if s.layer_name is not None:
            step["layer_name"] = s.layer_name
        steps[s.trajectory_id].append(step)
    items = []
    for r in rows:
        item: dict[str, Any] = {
            "id": r.id,
            "query_embedding": r.query_embedding.tolist(),
            "steps": steps[r.id],
            "quality": r.quality,
        }
        if r.model_route is not None:
            item["model_route"] = r.model_route
        if r.context_ids:
            item["context_ids"] = list(r.context_ids)
        if r.latency_us is not None:
            item["latency_us"] = r.latency_us
        items.append(item)
    return items


def archive_line(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"), allow_nan=False) + "\n"


# -- deleting and counting ------------------------------------------------------------


def drop_vectors(session: Session, ids: list[int], now: dt.datetime) -> int:
    """Delete the vectors and steps of `ids` and mark their rows; returns the
    steps deleted. Ids are bound exactly (a range could take in a PostgreSQL
    trajectory committed meanwhile with an id inside it)."""
    options = {"synchronize_session": False}
    steps = session.execute(
        sa.delete(TrajectoryStep).where(TrajectoryStep.trajectory_id.in_(ids)),
        execution_options=options,
    )
    session.execute(
        sa.delete(TrajectoryVectors).where(TrajectoryVectors.trajectory_id.in_(ids)),
        execution_options=options,
    )
    session.execute(
        sa.update(Trajectory).where(Trajectory.id.in_(ids)).values(vectors_dropped_at=now),
        execution_options=options,
    )
    return int(cast(sa.CursorResult[Any], steps).rowcount)


def dropped_count(session: Session, cycle_ids: list[int]) -> int:
    """Trajectories consumed by these cycles whose vectors gc deleted."""
    if not cycle_ids:
        return 0
    return (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Trajectory)
            .where(
                Trajectory.consumed_by_cycle_id.in_(cycle_ids),
                Trajectory.vectors_dropped_at.is_not(None),
            )
        )
        or 0
    )


def dropped_among(session: Session, trajectory_ids: list[int]) -> int:
    """How many of these trajectories gc deleted the vectors of."""
    from sona_store.db.quarantines import chunks

    return sum(
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Trajectory)
            .where(Trajectory.id.in_(chunk), Trajectory.vectors_dropped_at.is_not(None))
        )
        or 0
        for chunk in chunks(sorted(trajectory_ids))
    )


def count_dropped(session: Session) -> int:
    return (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Trajectory)
            .where(Trajectory.vectors_dropped_at.is_not(None))
        )
        or 0
    )


def last_gc(session: Session) -> AuditEvent | None:
    return session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "gc").order_by(AuditEvent.id.desc())
    ).first()
