"""Trajectory rows: bulk insert, the pending queue, and the retention window."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.models import Cycle, Trajectory, TrajectoryStep
from sona_store.db.types import FLOAT32, utcnow
from sona_store.validation import TrajectoryBatch

INSERT_CHUNK = 2000  # rows per INSERT statement group; keeps bound parameters in limits


def insert_batch(session: Session, batch: TrajectoryBatch) -> list[int]:
    """Insert validated trajectories and their steps; ids in batch order."""
    if not len(batch):
        return []
    now = utcnow()
    query_bytes = [row.tobytes() for row in batch.queries.astype(FLOAT32)]
    embedding_bytes = [row.tobytes() for row in batch.pattern_embeddings.astype(FLOAT32)]
    rows = [
        {
            "query_embedding": query_bytes[i],
            "pattern_embedding": embedding_bytes[i],
            "quality": float(batch.qualities[i]),
            "latency_us": batch.latencies[i],
            "model_route": batch.routes[i],
            "context_ids": batch.contexts[i],
            "created_at": now,
        }
        for i in range(len(batch))
    ]
    statement = sa.insert(Trajectory).returning(Trajectory.id, sort_by_parameter_order=True)
    ids: list[int] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        ids.extend(session.scalars(statement, rows[start : start + INSERT_CHUNK]).all())
    if len(batch.step_owner):
        owner_ids = np.asarray(ids, dtype=np.int64)[batch.step_owner]
        activation_bytes = [row.tobytes() for row in batch.activations.astype(FLOAT32)]
        steps = [
            {
                "trajectory_id": int(owner_ids[j]),
                "step_index": int(batch.step_index[j]),
                "activations": activation_bytes[j],
                "attention_weights": batch.attention[j].astype(FLOAT32).tobytes(),
                "reward": float(batch.rewards[j]),
                "layer_name": batch.layer_names[j],
            }
            for j in range(len(owner_ids))
        ]
        for start in range(0, len(steps), INSERT_CHUNK):
            session.execute(sa.insert(TrajectoryStep), steps[start : start + INSERT_CHUNK])
    return ids


def count_pending(session: Session) -> int:
    return (
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Trajectory)
            .where(Trajectory.consumed_by_cycle_id.is_(None))
        )
        or 0
    )


def count_all(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Trajectory)) or 0


def claim_pending(session: Session, cycle_id: int) -> int:
    """Mark every committed pending trajectory as consumed by `cycle_id`. Rows
    other transactions have not committed yet are not seen and stay pending."""
    result = session.execute(
        sa.update(Trajectory)
        .where(Trajectory.consumed_by_cycle_id.is_(None))
        .values(consumed_by_cycle_id=cycle_id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def load_window(
    session: Session, limit: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The retention window: the `limit` most recently consumed trajectories of
    completed cycles, oldest first (the reference's pattern-bank order).
    Returns (ids, pattern embeddings (n, dim), qualities)."""
    # Raw bytes, joined once below: far cheaper than one numpy array per row.
    statement = (
        sa.select(
            Trajectory.id,
            sa.type_coerce(Trajectory.pattern_embedding, sa.LargeBinary),
            Trajectory.quality,
        )
        .join(Cycle, Cycle.id == Trajectory.consumed_by_cycle_id)
        .where(Cycle.status == "completed")
        .order_by(Trajectory.consumed_by_cycle_id.desc(), Trajectory.id.desc())
        .limit(limit)
    )
    rows = session.execute(statement).all()
    rows.reverse()
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    qualities = np.fromiter((r[2] for r in rows), dtype=np.float64, count=n)
    embeddings = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=FLOAT32).reshape(n, dim)
    return ids, embeddings, qualities


def requeue(session: Session, cycle_ids: list[int]) -> int:
    """Make the trajectories consumed by these cycles pending again."""
    if not cycle_ids:
        return 0
    result = session.execute(
        sa.update(Trajectory)
        .where(Trajectory.consumed_by_cycle_id.in_(cycle_ids))
        .values(consumed_by_cycle_id=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
