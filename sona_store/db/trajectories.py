"""Trajectory rows: bulk insert, the pending queue, and the retention window."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sona_store.db.driver import Driver
from sona_store.db.models import Cycle, Trajectory, TrajectoryStep, TrajectoryVectors
from sona_store.db.types import FLOAT32, utcnow
from sona_store.validation import TrajectoryBatch

_MAX_TRAJECTORY_ID = "SELECT max(id) FROM trajectories"
_NEXT_TRAJECTORY_IDS = (
    "SELECT nextval(pg_get_serial_sequence('trajectories', 'id')) FROM generate_series(1, ?)"
)


def reserve_ids(driver: Driver, n: int) -> list[int]:
    """n fresh trajectory ids, ascending. PostgreSQL draws them from the
    column's sequence; SQLite continues after the largest id, which is safe
    because record transactions hold SQLite's write lock from BEGIN."""
    if n == 0:
        return []
    if driver.dialect.name == "postgresql":
        drawn = driver.execute(_NEXT_TRAJECTORY_IDS, (n,)).fetchall()
        return sorted(row[0] for row in drawn)
    start = driver.scalar(_MAX_TRAJECTORY_ID) or 0
    return list(range(start + 1, start + n + 1))


def insert_batch(connection: Connection, batch: TrajectoryBatch) -> list[int]:
    """Insert validated trajectories, their vectors and steps; ids in batch order.
    Ids are reserved first so every table goes in as one plain executemany,
    on the driver's cursor (the recording hot path, see `driver`)."""
    if not len(batch):
        return []
    driver = Driver(connection)
    n = len(batch)
    ids = reserve_ids(driver, n)
    created = driver.stored(Trajectory.__table__.c.created_at, utcnow())
    contexts = [json.dumps(c) if c else "[]" for c in batch.contexts]
    driver.insert_columns(
        Trajectory.__table__,
        {
            "id": ids,
            "quality": batch.qualities.tolist(),
            "latency_us": batch.latencies,
            "model_route": batch.routes,
            "context_ids": contexts,
            "created_at": [created] * n,
        },
    )
    driver.insert_columns(
        TrajectoryVectors.__table__,
        {
            "trajectory_id": ids,
            "query_embedding": _row_bytes(batch.queries),
            "pattern_embedding": _row_bytes(batch.pattern_embeddings),
        },
    )
    if len(batch.step_owner):
        driver.insert_columns(
            TrajectoryStep.__table__,
            {
                "trajectory_id": np.asarray(ids, dtype=np.int64)[batch.step_owner].tolist(),
                "step_index": batch.step_index.tolist(),
                "activations": _row_bytes(batch.activations),
                "attention_weights": batch.attention,
                "reward": batch.rewards.tolist(),
                "layer_name": batch.layer_names,
            },
        )
    return ids


def _row_bytes(matrix: np.ndarray) -> list[bytes]:
    """Each row's float32 bytes, sliced from one buffer (no array per row)."""
    data = np.ascontiguousarray(matrix, dtype=FLOAT32).tobytes()
    n = len(matrix)
    width = len(data) // n if n else 0
    return [data[i * width : (i + 1) * width] for i in range(n)]


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


WINDOW_FETCH = 1024  # rows a fetch: ~1 MB of vectors, copied while still in cache


def load_window(
    session: Session, limit: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The retention window: the `limit` most recently consumed trajectories of
    completed cycles, oldest first (the reference's pattern-bank order).
    Returns (ids, pattern embeddings (n, dim), qualities).

    Read with the driver's own cursor, WINDOW_FETCH rows at a time, each batch
    of vectors copied straight into one array sized by a count first (filled
    from its end: the rows come newest first). SQLAlchemy rows holding every
    row's bytes at once took 2.5x the driver's time at 100k rows (0.42 s against
    0.17 s on SQLite) and held ~200 MB more; PostgreSQL sends the rows in binary
    (bytea as text is twice the size, then decoded)."""
    window = (
        sa.select(Trajectory.id)
        .join(Cycle, Cycle.id == Trajectory.consumed_by_cycle_id)
        .where(Cycle.status == "completed")
        .limit(limit)
        .subquery()
    )
    n = session.scalar(sa.select(sa.func.count()).select_from(window)) or 0
    ids = np.empty(n, dtype=np.int64)
    qualities = np.empty(n, dtype=np.float64)
    embeddings = np.empty((n, dim), dtype=FLOAT32)
    end = n
    for rows in _fetch_raw(session, _window_statement(session, limit)):
        m = len(rows)
        if m > end:  # the cycle lock keeps the window still; never expected
            raise RuntimeError("the retention window changed while it was read")
        rows.reverse()
        ids[end - m : end] = [r[0] for r in rows]
        qualities[end - m : end] = [r[2] for r in rows]
        embeddings[end - m : end] = np.frombuffer(
            b"".join([r[1] for r in rows]), dtype=FLOAT32
        ).reshape(m, dim)
        end -= m
    return ids[end:], embeddings[end:], qualities[end:]


def _window_statement(session: Session, limit: int) -> sa.Select:
    """(id, pattern embedding, quality) of the window, newest first."""
    if session.get_bind().dialect.name != "postgresql":
        return (
            sa.select(Trajectory.id, TrajectoryVectors.pattern_embedding, Trajectory.quality)
            .join(Cycle, Cycle.id == Trajectory.consumed_by_cycle_id)
            .join(TrajectoryVectors, TrajectoryVectors.trajectory_id == Trajectory.id)
            .where(Cycle.status == "completed")
            # Cycle.id (equal to consumed_by_cycle_id here) lets SQLite walk the
            # indexes backwards instead of sorting the whole history.
            .order_by(Cycle.id.desc(), Trajectory.id.desc())
            .limit(limit)
        )
    # PostgreSQL sorts (its statistics of a freshly filled table are stale, and
    # with fresh ones it prefers a hash join): sort the narrow rows only, then
    # fetch each one's vector by primary key in that order. Sorting the rows
    # with their 1 KiB vectors spilled ~100 MB to disk at 100k (2x slower).
    window = (
        sa.select(
            Trajectory.id.label("id"), Trajectory.quality.label("quality"), Cycle.id.label("cycle")
        )
        .join(Cycle, Cycle.id == Trajectory.consumed_by_cycle_id)
        .where(Cycle.status == "completed")
        .order_by(Cycle.id.desc(), Trajectory.id.desc())
        .limit(limit)
        .subquery("w")
    )
    return (
        sa.select(window.c.id, TrajectoryVectors.pattern_embedding, window.c.quality)
        .join(TrajectoryVectors, TrajectoryVectors.trajectory_id == window.c.id)
        .order_by(window.c.cycle.desc(), window.c.id.desc())
    )


def _fetch_raw(session: Session, statement: sa.Select) -> Iterator[list[tuple]]:
    """The statement's rows as the driver returns them (bytes for blobs, no
    SQLAlchemy row processing), WINDOW_FETCH at a time, on the session's
    connection (so inside its transaction)."""
    connection = session.connection()
    dialect = connection.dialect
    compiled = statement.compile(dialect=dialect)
    if compiled.positiontup is not None:
        params: tuple | dict = tuple(compiled.params[name] for name in compiled.positiontup)
    else:
        params = compiled.params
    dbapi = connection.connection.dbapi_connection
    # psycopg 3 in binary: bytea arrives as bytes, not as hex text to decode.
    cursor = dbapi.cursor(binary=True) if dialect.name == "postgresql" else dbapi.cursor()
    try:
        cursor.execute(str(compiled), params)
        while rows := cursor.fetchmany(WINDOW_FETCH):
            yield rows
    finally:
        cursor.close()


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
