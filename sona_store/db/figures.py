"""The figures `sona_store.scheduler.metrics` exposes, read in one transaction. Each is
an aggregate over an index or a small table, so a scrape stays cheap as the
trajectories grow (no count over them: see `StoreFigures.trajectories_recorded`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db import trajectories
from sona_store.db.models import AuditEvent, Cycle, LoraVersion, Trajectory
from sona_store.enums import RAN_STATUSES, CycleStatus, LoraTier


@dataclass(frozen=True)
class StoreFigures:
    cycles_by_status: dict[str, int]
    # Cycles that ran (RAN_STATUSES): count, sum of seconds, and for each bucket
    # bound the count that took at most that long (cumulative, as Prometheus).
    duration_count: int
    duration_sum: float
    duration_buckets: list[tuple[float, int]]
    trajectories_pending: int
    # The highest trajectory id: trajectories are never deleted, so this is the
    # number recorded (exact on SQLite; on PostgreSQL an insert that rolled
    # back also used ids). A count(*) would read the whole table.
    trajectories_recorded: int
    micro_lora_versions: int
    last_success: dt.datetime | None
    gc_runs: int  # the audit rows of gc (retention): runs that deleted vectors


def store_figures(session: Session, buckets: Sequence[float]) -> StoreFigures:
    by_status = {status.value: 0 for status in CycleStatus}
    for status, count in session.execute(
        sa.select(Cycle.status, sa.func.count()).group_by(Cycle.status)
    ):
        by_status[status] = count
    ran = Cycle.status.in_(RAN_STATUSES)
    elapsed = Cycle.elapsed_seconds
    row = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(elapsed), 0.0),
            *(
                sa.func.coalesce(sa.func.sum(sa.case((elapsed <= b, 1), else_=0)), 0)
                for b in buckets
            ),
        ).where(ran)
    ).one()
    return StoreFigures(
        cycles_by_status=by_status,
        duration_count=row[0],
        duration_sum=float(row[1]),
        duration_buckets=[(float(b), int(n)) for b, n in zip(buckets, row[2:], strict=True)],
        trajectories_pending=trajectories.count_pending(session),
        trajectories_recorded=session.scalar(sa.select(sa.func.max(Trajectory.id))) or 0,
        micro_lora_versions=session.scalar(
            sa.select(sa.func.count())
            .select_from(LoraVersion)
            .where(LoraVersion.tier == LoraTier.MICRO)
        )
        or 0,
        last_success=session.scalar(sa.select(sa.func.max(Cycle.finished_at)).where(ran)),
        gc_runs=session.scalar(
            sa.select(sa.func.count()).select_from(AuditEvent).where(AuditEvent.action == "gc")
        )
        or 0,
    )
