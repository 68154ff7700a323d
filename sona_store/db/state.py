"""Versioned learning state: content-addressed blobs, LoRA versions, EWC++
states and the head pointer. Every save appends rows; nothing is updated but
the head."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sona_store.db.driver import Driver
from sona_store.db.models import EwcState as EwcStateRow
from sona_store.db.models import EwcTaskMemory, LoraVersion, StoreHead, VectorBlob
from sona_store.db.types import FLOAT32, utcnow
from sona_store.enums import LoraTier
from sona_store.errors import LoraVersionNotFoundError, NotFoundError
from sona_store.learning.base_lora import BaseLoraWeights
from sona_store.learning.ewc import EwcState, TaskMemory
from sona_store.learning.micro_lora import MicroLoraWeights

# -- blobs --------------------------------------------------------------------


# The writes below run on every micro-LoRA flush, so they go through the
# driver's cursor (see `driver`). RETURNING (SQLite >= 3.35) gives a new
# blob's id in its insert; on a conflict it returns no row and the lookup
# finds the existing one.
_INSERT_BLOB = (
    "INSERT INTO vector_blobs (sha256, length, data) VALUES (?, ?, ?) "
    "ON CONFLICT (sha256) DO NOTHING RETURNING id"
)
_FIND_BLOB = "SELECT id FROM vector_blobs WHERE sha256 = ?"

Executor = Session | Connection  # reads run on either; writes take the connection


def _connection(db: Executor) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def put_blob(db: Executor, array: np.ndarray) -> int:
    """Store a float32 array once; identical bytes return the existing id."""
    return _put_blob(Driver(_connection(db)), array)


def _put_blob(driver: Driver, array: np.ndarray) -> int:
    data = np.ascontiguousarray(array, dtype=FLOAT32).tobytes()
    digest = hashlib.sha256(data).hexdigest()
    blob_id = driver.scalar(_INSERT_BLOB, (digest, len(data) // 4, data))
    if blob_id is None:  # stored before, by us or by a concurrent writer
        blob_id = driver.scalar(_FIND_BLOB, (digest,))
    return int(blob_id)


def get_blobs(db: Executor, blob_ids: list[int]) -> dict[int, np.ndarray]:
    rows = db.execute(
        sa.select(VectorBlob.id, VectorBlob.data).where(VectorBlob.id.in_(set(blob_ids)))
    ).all()
    return {row.id: np.frombuffer(bytes(row.data), dtype=FLOAT32) for row in rows}


# -- LoRA versions ------------------------------------------------------------


def save_lora(
    db: Executor,
    tier: str,
    down: np.ndarray,
    up: np.ndarray,
    alpha: float,
    *,
    parent_id: int | None,
    source: str,
    note: str | None = None,
    down_blob_id: int | None = None,
) -> int:
    """Append a LoRA version; `down`/`up` are (layers, rank, dim) (micro: layers 1).
    `down_blob_id`: the blob already holding `down` (a flush's, unchanged)."""
    driver = Driver(_connection(db))
    if down_blob_id is None:
        down_blob_id = _put_blob(driver, down.reshape(-1))
    layers, rank, dim = up.shape
    values = {
        "tier": tier,
        "parent_id": parent_id,
        "layers": layers,
        "rank": rank,
        "dim": dim,
        "alpha": float(alpha),
        "down_blob_id": down_blob_id,
        "up_blob_id": _put_blob(driver, up.reshape(-1)),
        "source": source,
        "note": note,
        "created_at": driver.stored(LoraVersion.__table__.c.created_at, utcnow()),
    }
    return driver.insert_returning_id(LoraVersion.__table__, values)


def save_base_lora(session: Session, weights: BaseLoraWeights, **kwargs: Any) -> int:
    return save_lora(session, LoraTier.BASE, weights.down, weights.up, weights.alpha, **kwargs)


def save_micro_lora(session: Session, weights: MicroLoraWeights, **kwargs: Any) -> int:
    return save_lora(
        session, LoraTier.MICRO, weights.down[None], weights.up[None], float(weights.rank), **kwargs
    )


@dataclass(frozen=True)
class LoraArrays:
    version_id: int
    tier: str
    down: np.ndarray  # (layers, rank, dim)
    up: np.ndarray
    alpha: float
    parent_id: int | None
    source: str
    down_blob_id: int


_LORA_VERSION = sa.select(LoraVersion.__table__).where(LoraVersion.id == sa.bindparam("id"))


def load_lora(db: Executor, version_id: int) -> LoraArrays:
    row = db.execute(_LORA_VERSION, {"id": version_id}).one_or_none()
    if row is None:
        raise LoraVersionNotFoundError(f"no LoRA version {version_id}")
    blobs = get_blobs(db, [row.down_blob_id, row.up_blob_id])
    shape = (row.layers, row.rank, row.dim)
    return LoraArrays(
        version_id=row.id,
        tier=row.tier,
        down=blobs[row.down_blob_id].reshape(shape),
        up=blobs[row.up_blob_id].reshape(shape),
        alpha=row.alpha,
        parent_id=row.parent_id,
        source=row.source,
        down_blob_id=row.down_blob_id,
    )


def load_base_lora(session: Session, version_id: int) -> BaseLoraWeights:
    arrays = load_lora(session, version_id)
    return BaseLoraWeights(down=arrays.down, up=arrays.up, alpha=arrays.alpha)


def load_micro_lora(db: Executor, version_id: int) -> MicroLoraWeights:
    return load_micro_lora_version(db, version_id).weights


@dataclass(frozen=True)
class MicroLoraVersion:
    """A stored micro-LoRA version, as a flush starts from it."""

    version_id: int
    weights: MicroLoraWeights
    down_blob_id: int


def load_micro_lora_version(db: Executor, version_id: int) -> MicroLoraVersion:
    arrays = load_lora(db, version_id)
    weights = MicroLoraWeights(down=arrays.down[0], up=arrays.up[0])
    return MicroLoraVersion(version_id, weights, arrays.down_blob_id)


def append_micro_lora(
    connection: Connection,
    weights: MicroLoraWeights,
    parent: MicroLoraVersion,
    note: str,
    source: str = "flush",
) -> MicroLoraVersion:
    """A flush's (or a quarantine's replay's) new version. Both change only
    `up`, so the parent's `down` blob is shared without hashing or looking it
    up again."""
    unchanged = np.array_equal(weights.down, parent.weights.down)
    down_blob_id = parent.down_blob_id if unchanged else put_blob(connection, weights.down)
    version_id = save_lora(
        connection,
        LoraTier.MICRO,
        weights.down[None],
        weights.up[None],
        float(weights.rank),
        parent_id=parent.version_id,
        source=source,
        note=note,
        down_blob_id=down_blob_id,
    )
    return MicroLoraVersion(version_id, weights, down_blob_id)


# -- EWC++ states ---------------------------------------------------------------


def save_ewc_state(
    session: Session, state: EwcState, *, parent_id: int | None, task_boundary: bool = False
) -> int:
    row = EwcStateRow(
        parent_id=parent_id,
        task_id=state.task_id,
        ewc_lambda=float(state.lambda_),
        samples_seen=state.samples_seen,
        task_boundary=task_boundary,
        fisher_blob_id=put_blob(session, state.fisher),
        weights_blob_id=put_blob(session, state.weights),
        gradient_mean_blob_id=put_blob(session, state.grad_mean),
        gradient_var_blob_id=put_blob(session, state.grad_var),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    if state.tasks:
        session.execute(
            sa.insert(EwcTaskMemory),
            [
                {
                    "ewc_state_id": row.id,
                    "slot": slot,
                    "task_id": task.task_id,
                    "importance": float(task.importance),
                    "fisher_blob_id": put_blob(session, task.fisher),
                    "weights_blob_id": put_blob(session, task.optimal_weights),
                }
                for slot, task in enumerate(state.tasks)
            ],
        )
    return row.id


def load_ewc_state(session: Session, state_id: int) -> EwcState:
    row = session.get(EwcStateRow, state_id)
    if row is None:
        raise NotFoundError(f"no EWC++ state {state_id}")
    tasks = session.scalars(
        sa.select(EwcTaskMemory)
        .where(EwcTaskMemory.ewc_state_id == state_id)
        .order_by(EwcTaskMemory.slot)
    ).all()
    ids = [
        row.fisher_blob_id,
        row.weights_blob_id,
        row.gradient_mean_blob_id,
        row.gradient_var_blob_id,
    ]
    for task in tasks:
        ids += [task.fisher_blob_id, task.weights_blob_id]
    blobs = get_blobs(session, ids)
    return EwcState(
        fisher=blobs[row.fisher_blob_id],
        weights=blobs[row.weights_blob_id],
        grad_mean=blobs[row.gradient_mean_blob_id],
        grad_var=blobs[row.gradient_var_blob_id],
        samples_seen=row.samples_seen,
        task_id=row.task_id,
        lambda_=row.ewc_lambda,
        tasks=tuple(
            TaskMemory(
                task_id=t.task_id,
                fisher=blobs[t.fisher_blob_id],
                optimal_weights=blobs[t.weights_blob_id],
                importance=t.importance,
            )
            for t in tasks
        ),
    )


# -- the head -------------------------------------------------------------------


def get_head(session: Session, *, for_update: bool = False) -> StoreHead:
    statement = sa.select(StoreHead).where(StoreHead.id == 1)
    if for_update:
        statement = statement.with_for_update()
    head = session.scalars(statement).one_or_none()
    if head is None:
        raise NotFoundError("the store has no head row: it was not initialised")
    return head


_MICRO_POINTER = "SELECT micro_lora_version_id FROM store_head WHERE id = 1"
_POINT_MICRO = "UPDATE store_head SET micro_lora_version_id = ?, updated_at = ? WHERE id = 1"


def micro_lora_pointer(connection: Connection, *, for_update: bool = False) -> int:
    """The head's micro-LoRA version; `for_update` locks the head row
    (PostgreSQL) so concurrent flushes apply one after the other."""
    driver = Driver(connection)
    locks = for_update and driver.dialect.name == "postgresql"
    version = driver.scalar(_MICRO_POINTER + " FOR UPDATE" if locks else _MICRO_POINTER)
    if version is None:
        raise NotFoundError("the store has no head row: it was not initialised")
    return int(version)


def point_micro_lora(connection: Connection, version_id: int) -> None:
    """Move the head's micro-LoRA pointer (the flush's one head write)."""
    driver = Driver(connection)
    at = driver.stored(StoreHead.__table__.c.updated_at, utcnow())
    driver.execute(_POINT_MICRO, (version_id, at))


def move_head(session: Session, head: StoreHead, **pointers: int | None) -> None:
    for name, value in pointers.items():
        setattr(head, name, value)
    head.updated_at = utcnow()
    session.flush()
