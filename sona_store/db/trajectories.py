"""Trajectory rows: bulk insert, the pending queue, and the retention window."""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sona_store.db.copy import copy_columns, copy_supported
from sona_store.db.driver import Driver
from sona_store.db.models import Trajectory, TrajectoryStep, TrajectoryVectors
from sona_store.db.quarantines import quarantined
from sona_store.db.types import FLOAT32, utcnow
from sona_store.learning.embedding import trajectory_embeddings

_MAX_TRAJECTORY_ID = "SELECT max(id) FROM trajectories"
# One statement draws a batch's ids from the column's sequence and returns
# only their bounds when they are consecutive (always, unless another writer
# drew ids at the same moment); else all of them. Fetching 1000 rows of ids
# cost more than drawing them, and so did naming the sequence once an id
# (the OFFSET 0 subquery looks it up once a batch).
_NEXT_TRAJECTORY_IDS = (
    "SELECT min(v), max(v), CASE WHEN max(v) - min(v) + 1 = count(*) THEN NULL"
    " ELSE array_agg(v ORDER BY v) END FROM"
    " (SELECT nextval(s.seq) AS v FROM"
    " (SELECT pg_get_serial_sequence('trajectories', 'id')::regclass AS seq OFFSET 0) AS s,"
    " generate_series(1, ?)) AS drawn"
)


class TrajectoryBatch(Protocol):
    """The columns of n validated trajectories and their m steps, as this
    module inserts them (`services.validation` builds them: the store layer
    stores, it does not judge)."""

    queries: np.ndarray  # (n, embedding_dim) float32
    qualities: np.ndarray  # (n,) float64
    latencies: list[int | None]
    routes: list[str | None]
    contexts: list[list[str]]
    step_owner: np.ndarray  # (m,) index into the batch
    step_index: np.ndarray  # (m,) position within its trajectory
    activations: np.ndarray  # (m, hidden_dim) float32
    attention: list[bytes]  # m float32 vectors of any length, as stored
    rewards: np.ndarray  # (m,) float64
    layer_names: list[str | None]

    def __len__(self) -> int: ...


def reserve_ids(driver: Driver, n: int) -> list[int]:
    """n fresh trajectory ids, ascending. PostgreSQL draws them from the
    column's sequence (safe beside any number of concurrent writers: a
    sequence never hands out a value twice); SQLite continues after the
    largest id, which is safe because record transactions hold SQLite's write
    lock from BEGIN."""
    if n == 0:
        return []
    if driver.dialect.name == "postgresql":
        low, high, scattered = driver.execute(_NEXT_TRAJECTORY_IDS, (n,)).fetchone()
        if scattered is not None:
            return [int(i) for i in scattered]
        return list(range(int(low), int(high) + 1))
    start = driver.scalar(_MAX_TRAJECTORY_ID) or 0
    return list(range(start + 1, start + n + 1))


def insert_batch(
    connection: Connection, batch: TrajectoryBatch, ids: list[int] | None = None
) -> list[int]:
    """Insert validated trajectories, their vectors and steps; ids in batch order.
    Ids are reserved first so every table goes in as one binary COPY on
    PostgreSQL (`db.copy`), one plain executemany on the driver's cursor on
    SQLite (the recording hot path, see `driver`). `ids`:
    reserved already (the writer keeps them across a retry, see `writer`)."""
    if not len(batch):
        return []
    driver = Driver(connection)
    n = len(batch)
    ids = reserve_ids(driver, n) if ids is None else ids
    created = driver.stored(Trajectory.__table__.c.created_at, utcnow())
    contexts = [json.dumps(c) if c else "[]" for c in batch.contexts]
    _insert_columns(
        driver,
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
    insert_vectors(driver, ids, batch)
    return ids


def insert_vectors(driver: Driver, ids: list[int], batch: TrajectoryBatch) -> None:
    """The vectors and steps of `batch`, as trajectories `ids` (also how
    `ingest --restore` puts back what gc deleted)."""
    _insert_columns(
        driver,
        TrajectoryVectors.__table__,
        {
            "trajectory_id": ids,
            "query_embedding": _row_bytes(batch.queries),
        },
    )
    if len(batch.step_owner):
        _insert_columns(
            driver,
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


def _insert_columns(driver: Driver, table: sa.FromClause, columns: dict[str, list[Any]]) -> None:
    """PostgreSQL (psycopg): one binary COPY a table (`db.copy`); SQLite: the
    driver's executemany."""
    if copy_supported(driver.connection):
        copy_columns(driver.connection, table, columns)
    else:
        driver.insert_columns(table, columns)


def _row_bytes(matrix: np.ndarray) -> list[bytes]:
    """Each row's float32 bytes, sliced from one buffer (no array per row)."""
    data = np.ascontiguousarray(matrix, dtype=FLOAT32).tobytes()
    n = len(matrix)
    width = len(data) // n if n else 0
    return [data[i * width : (i + 1) * width] for i in range(n)]


def pending() -> sa.ColumnElement[bool]:
    """Waiting for a cycle: not consumed, and not quarantined."""
    return sa.and_(Trajectory.consumed_by_cycle_id.is_(None), ~quarantined(Trajectory.id))


def count_pending(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Trajectory).where(pending())) or 0


def count_all(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Trajectory)) or 0


def claim_pending(session: Session, cycle_id: int) -> int:
    """Mark every committed pending trajectory as consumed by `cycle_id`. Rows
    other transactions have not committed yet are not seen and stay pending;
    quarantined ones are never taken."""
    result = session.execute(
        sa.update(Trajectory)
        .where(pending())
        .values(consumed_by_cycle_id=cycle_id)
        .execution_options(synchronize_session=False)
    )
    return int(cast(sa.CursorResult[Any], result).rowcount)


WINDOW_FETCH = 1024  # trajectories a read: ~2 MB of vectors, embedded while in cache

_WINDOW = (
    "SELECT t.id, t.quality, t.model_route FROM trajectories t"
    " JOIN cycles c ON c.id = t.consumed_by_cycle_id"
    " WHERE c.status = 'completed'"
    # Trajectories whose vectors gc deleted are out of every window (the
    # retention policy keeps the windows a rollback within its horizon needs).
    " AND t.vectors_dropped_at IS NULL"
    # The cycle's id (equal to consumed_by_cycle_id here) lets SQLite walk the
    # indexes backwards instead of sorting the whole history.
    " ORDER BY c.id DESC, t.id DESC LIMIT ?"
)
_QUERIES = (
    "SELECT trajectory_id, query_embedding FROM trajectory_vectors"
    " WHERE trajectory_id {ids} ORDER BY trajectory_id"
)
_STEPS = (
    "SELECT trajectory_id, activations, reward FROM trajectory_steps"
    " WHERE trajectory_id {ids} ORDER BY trajectory_id, step_index"
)


def load_window(
    session: Session, limit: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`load_window_with_routes` without the routes."""
    ids, embeddings, qualities, _routes = load_window_with_routes(session, limit, dim)
    return ids, embeddings, qualities


def load_window_with_routes(
    session: Session, limit: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """The retention window: the `limit` most recently consumed trajectories of
    completed cycles, oldest first (the reference's pattern-bank order).
    Returns (ids, pattern embeddings (n, dim), qualities, model routes).

    The embeddings are derived, not stored (storing them slowed recording,
    migration 0003): computed here from each query and its steps by the function
    validation checks them with. The window's ids come first (narrow rows);
    then, WINDOW_FETCH trajectories at a time in id order, their queries and
    their steps, read through the driver's cursor (SQLAlchemy rows cost
    several times the driver's time on large windows and held every row's
    bytes at once)."""
    driver = Driver(session.connection())
    ids, qualities, routes = _window_ids(driver, limit)
    embeddings = np.empty((len(ids), dim), dtype=FLOAT32)
    by_id = np.argsort(ids, kind="stable")  # read in id order: primary-key walks
    for start in range(0, len(ids), WINDOW_FETCH):
        positions = by_id[start : start + WINDOW_FETCH]
        chunk = ids[positions].tolist()
        queries = _rows_of(driver, _QUERIES, chunk)
        if [r[0] for r in queries] != chunk:  # the foreign keys make this impossible
            raise RuntimeError("a trajectory of the retention window has no stored vectors")
        embeddings[positions] = _embedded(queries, _rows_of(driver, _STEPS, chunk), chunk, dim)
    return ids, embeddings, qualities, routes


def _rows_of(driver: Driver, template: str, ids: list[int]) -> list[tuple[Any, ...]]:
    """The rows of `template` for trajectories `ids` (ascending): read as one
    range when the ids are dense (no more than twice as many rows, the others
    dropped here), else by id. Two plain primary-key walks, no join: joining
    steps to vectors cost PostgreSQL a sort of every read."""
    first, last = ids[0], ids[-1]
    if last - first < 2 * len(ids):
        rows = driver.rows(template.format(ids="BETWEEN ? AND ?"), (first, last), binary=True)
        if last - first + 1 == len(ids):
            return rows
        wanted = set(ids)
        return [r for r in rows if r[0] in wanted]
    if driver.dialect.name == "postgresql":
        return driver.rows(template.format(ids="= ANY(?)"), (ids,), binary=True)
    markers = ", ".join(["?"] * len(ids))
    return driver.rows(template.format(ids=f"IN ({markers})"), ids, binary=True)


def _window_ids(driver: Driver, limit: int) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """The window's ids, qualities and routes, oldest first (the rows come
    newest first)."""
    ids: list[int] = []
    qualities: list[float] = []
    routes: list[str | None] = []
    cursor = driver.execute(_WINDOW, (limit,))
    while rows := cursor.fetchmany(10 * WINDOW_FETCH):
        ids.extend(r[0] for r in rows)
        qualities.extend(r[1] for r in rows)
        routes.extend(r[2] for r in rows)
    return (
        np.array(ids[::-1], dtype=np.int64),
        np.array(qualities[::-1], dtype=np.float64),
        routes[::-1],
    )


def _embedded(
    queries: list[tuple[Any, ...]], steps: list[tuple[Any, ...]], ids: list[int], dim: int
) -> np.ndarray:
    """Pattern embeddings of trajectories `ids` (ascending) from their query
    rows (id, query) and step rows (id, activations, reward), both in order."""
    owners = np.fromiter((r[0] for r in steps), dtype=np.int64, count=len(steps))
    activations = (
        np.frombuffer(b"".join([r[1] for r in steps]), dtype=FLOAT32).reshape(len(steps), -1)
        if steps
        else np.zeros((0, dim), dtype=FLOAT32)
    )
    return trajectory_embeddings(
        np.frombuffer(b"".join([r[1] for r in queries]), dtype=FLOAT32).reshape(len(ids), dim),
        np.searchsorted(np.asarray(ids, dtype=np.int64), owners),
        activations,
        np.array([r[2] for r in steps], dtype=np.float64).astype(np.float32),
    )


def requeue(session: Session, cycle_ids: list[int]) -> int:
    """Make the trajectories consumed by these cycles pending again (the
    quarantined among them stay out of every cycle while quarantined)."""
    if not cycle_ids:
        return 0
    result = session.execute(
        sa.update(Trajectory)
        .where(Trajectory.consumed_by_cycle_id.in_(cycle_ids))
        .values(consumed_by_cycle_id=None)
        .execution_options(synchronize_session=False)
    )
    return int(cast(sa.CursorResult[Any], result).rowcount)
