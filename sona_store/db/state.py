"""Versioned learning state: content-addressed blobs, LoRA versions, EWC++
states and the head pointer. Every save appends rows; nothing is updated but
the head."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.models import EwcState as EwcStateRow
from sona_store.db.models import EwcTaskMemory, LoraVersion, StoreHead, VectorBlob
from sona_store.db.types import FLOAT32, utcnow
from sona_store.learning.base_lora import BaseLoraWeights
from sona_store.learning.ewc import EwcState, TaskMemory
from sona_store.learning.micro_lora import MicroLoraWeights

# -- blobs --------------------------------------------------------------------


# Statements built once: building one costs more than running it on the hot
# path (a micro-LoRA flush runs several per recorded batch).
_FIND_BLOB = sa.select(VectorBlob.id).where(VectorBlob.sha256 == sa.bindparam("digest"))
# Plain text: SQLAlchemy does not cache the dialects' on-conflict constructs,
# and compiling one each flush cost more than the rest of the flush's SQL.
_INSERT_BLOB = sa.text(
    "INSERT INTO vector_blobs (sha256, length, data) VALUES (:sha256, :length, :data) "
    "ON CONFLICT (sha256) DO NOTHING"
)
_INSERT_LORA_VERSION = sa.insert(LoraVersion)


def put_blob(session: Session, array: np.ndarray) -> int:
    """Store a float32 array once; an identical array returns the existing id."""
    data = np.ascontiguousarray(array, dtype=FLOAT32).tobytes()
    digest = hashlib.sha256(data).hexdigest()
    conn = session.connection()
    existing = conn.execute(_FIND_BLOB, {"digest": digest}).scalar()
    if existing is not None:
        return existing
    # A concurrent writer may have stored the same bytes meanwhile: then this
    # inserts nothing and the lookup finds theirs.
    conn.execute(_INSERT_BLOB, {"sha256": digest, "length": len(data) // 4, "data": data})
    return conn.execute(_FIND_BLOB, {"digest": digest}).scalar_one()


def get_blobs(session: Session, blob_ids: list[int]) -> dict[int, np.ndarray]:
    rows = session.execute(
        sa.select(VectorBlob.id, VectorBlob.data).where(VectorBlob.id.in_(set(blob_ids)))
    ).all()
    return {row.id: np.frombuffer(bytes(row.data), dtype=FLOAT32) for row in rows}


# -- LoRA versions ------------------------------------------------------------


def save_lora(
    session: Session,
    tier: str,
    down: np.ndarray,
    up: np.ndarray,
    alpha: float,
    *,
    parent_id: int | None,
    source: str,
    note: str | None = None,
) -> int:
    """Append a LoRA version; `down`/`up` are (layers, rank, dim) (micro: layers 1)."""
    layers, rank, dim = up.shape
    values = {
        "tier": tier,
        "parent_id": parent_id,
        "layers": layers,
        "rank": rank,
        "dim": dim,
        "alpha": float(alpha),
        "down_blob_id": put_blob(session, down.reshape(-1)),
        "up_blob_id": put_blob(session, up.reshape(-1)),
        "source": source,
        "note": note,
        "created_at": utcnow(),
    }
    result = session.connection().execute(_INSERT_LORA_VERSION, values)
    return result.inserted_primary_key[0]


def save_base_lora(session: Session, weights: BaseLoraWeights, **kwargs: object) -> int:
    return save_lora(session, "base", weights.down, weights.up, weights.alpha, **kwargs)


def save_micro_lora(session: Session, weights: MicroLoraWeights, **kwargs: object) -> int:
    return save_lora(
        session, "micro", weights.down[None], weights.up[None], float(weights.rank), **kwargs
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


def load_lora(session: Session, version_id: int) -> LoraArrays:
    row = session.get(LoraVersion, version_id)
    if row is None:
        raise LookupError(f"no LoRA version {version_id}")
    blobs = get_blobs(session, [row.down_blob_id, row.up_blob_id])
    shape = (row.layers, row.rank, row.dim)
    return LoraArrays(
        version_id=row.id,
        tier=row.tier,
        down=blobs[row.down_blob_id].reshape(shape),
        up=blobs[row.up_blob_id].reshape(shape),
        alpha=row.alpha,
        parent_id=row.parent_id,
        source=row.source,
    )


def load_base_lora(session: Session, version_id: int) -> BaseLoraWeights:
    arrays = load_lora(session, version_id)
    return BaseLoraWeights(down=arrays.down, up=arrays.up, alpha=arrays.alpha)


def load_micro_lora(session: Session, version_id: int) -> MicroLoraWeights:
    arrays = load_lora(session, version_id)
    return MicroLoraWeights(down=arrays.down[0], up=arrays.up[0])


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
        raise LookupError(f"no EWC++ state {state_id}")
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
        raise LookupError("the store has no head row: it was not initialised")
    return head


_MICRO_POINTER = sa.select(StoreHead.micro_lora_version_id).where(StoreHead.id == 1)
_LOCKED_MICRO_POINTER = _MICRO_POINTER.with_for_update()
_POINT_MICRO = (
    sa.update(StoreHead)
    .where(StoreHead.id == 1)
    .values(micro_lora_version_id=sa.bindparam("version"), updated_at=sa.bindparam("at"))
)


def micro_lora_pointer(session: Session, *, for_update: bool = False) -> int:
    """The head's micro-LoRA version; `for_update` locks the head row
    (PostgreSQL) so concurrent flushes apply one after the other."""
    statement = _LOCKED_MICRO_POINTER if for_update else _MICRO_POINTER
    version = session.connection().execute(statement).scalar()
    if version is None:
        raise LookupError("the store has no head row: it was not initialised")
    return version


def point_micro_lora(session: Session, version_id: int) -> None:
    """Move the head's micro-LoRA pointer (the flush's one head write)."""
    session.connection().execute(_POINT_MICRO, {"version": version_id, "at": utcnow()})


def move_head(session: Session, head: StoreHead, **pointers: int | None) -> None:
    for name, value in pointers.items():
        setattr(head, name, value)
    head.updated_at = utcnow()
    session.flush()
