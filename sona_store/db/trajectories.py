"""Trajectory rows: bulk insert, the pending queue, and the retention window."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.models import Cycle, Trajectory, TrajectoryStep
from sona_store.db.types import FLOAT32, utcnow
from sona_store.validation import TrajectoryBatch

INSERT_CHUNK = 2000  # rows per INSERT statement group; keeps bound parameters in limits


def reserve_ids(session: Session, n: int) -> list[int]:
    """n fresh trajectory ids, ascending. PostgreSQL draws them from the
    column's sequence; SQLite continues after the largest id, which is safe
    because record transactions hold SQLite's write lock from BEGIN."""
    if n == 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        drawn = session.scalars(
            sa.text(
                "SELECT nextval(pg_get_serial_sequence('trajectories', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": n},
        ).all()
        return sorted(drawn)
    start = session.scalar(sa.select(sa.func.max(Trajectory.id))) or 0
    return list(range(start + 1, start + n + 1))


def insert_batch(session: Session, batch: TrajectoryBatch) -> list[int]:
    """Insert validated trajectories and their steps; ids in batch order.
    Ids are reserved first so both tables go in as plain executemany (an
    INSERT .. RETURNING per row is several times slower)."""
    if not len(batch):
        return []
    ids = reserve_ids(session, len(batch))
    now = utcnow()
    queries = batch.queries.astype(FLOAT32, copy=False)
    embeddings = batch.pattern_embeddings.astype(FLOAT32, copy=False)
    rows = [
        {
            "id": ids[i],
            "query_embedding": queries[i].tobytes(),
            "pattern_embedding": embeddings[i].tobytes(),
            "quality": float(batch.qualities[i]),
            "latency_us": batch.latencies[i],
            "model_route": batch.routes[i],
            "context_ids": batch.contexts[i],
            "created_at": now,
        }
        for i in range(len(batch))
    ]
    connection = session.connection()
    for start in range(0, len(rows), INSERT_CHUNK):
        connection.execute(sa.insert(Trajectory.__table__), rows[start : start + INSERT_CHUNK])
    if len(batch.step_owner):
        owners = np.asarray(ids, dtype=np.int64)[batch.step_owner].tolist()
        activations = batch.activations.astype(FLOAT32, copy=False)
        steps = [
            {
                "trajectory_id": owners[j],
                "step_index": int(batch.step_index[j]),
                "activations": activations[j].tobytes(),
                "attention_weights": batch.attention[j].astype(FLOAT32, copy=False).tobytes(),
                "reward": float(batch.rewards[j]),
                "layer_name": batch.layer_names[j],
            }
            for j in range(len(owners))
        ]
        for start in range(0, len(steps), INSERT_CHUNK):
            connection.execute(
                sa.insert(TrajectoryStep.__table__), steps[start : start + INSERT_CHUNK]
            )
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
