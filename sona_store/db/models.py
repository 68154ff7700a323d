"""The tables, as SQLAlchemy 2.0 typed models. Column names are plain English so
that `sqlite3 sona.db` or `psql` users can write SQL against them directly.

History is append-only: cycles, LoRA versions and EWC++ states are never
rewritten (two exceptions: rollback marks a cycle's status, and an idle
scheduled tick adds itself to the skipped row of the tick before it). What is
"current" is the single `store_head` row. Large arrays live in `vector_blobs`,
keyed by their SHA-256, so an unchanged array is stored once however many
versions refer to it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sona_store.db.types import Float32Vector, UtcDateTime, utcnow
from sona_store.enums import CycleStatus, CycleTrigger, LoraTier, sql_in

# Deterministic constraint names: Alembic's batch mode on SQLite needs them, and
# they make migrations readable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UtcDateTime(),
        np.ndarray: Float32Vector(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class StoreSettings(Base):
    """One row: the configuration the store was created with."""

    __tablename__ = "store_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class VectorBlob(Base):
    """A float32 array stored once, addressed by the SHA-256 of its bytes."""

    __tablename__ = "vector_blobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    length: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LoraVersion(Base):
    """One immutable version of a LoRA tier's weights; `parent_id` is the version
    it was derived from (NULL for the initial one)."""

    __tablename__ = "lora_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tier: Mapped[str] = mapped_column(String(8))  # a LoraTier
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("lora_versions.id"))
    layers: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    down_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    up_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    source: Mapped[str] = mapped_column(String(16))  # initial, cycle, flush, import, replay
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        CheckConstraint(sql_in("tier", LoraTier), name="tier"),
        Index("ix_lora_versions_tier_id", "tier", "id"),
    )


class EwcState(Base):
    """One immutable EWC++ state: current Fisher and weights, gradient statistics,
    lambda; its remembered tasks are rows of `ewc_task_memory`."""

    __tablename__ = "ewc_states"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ewc_states.id"))
    task_id: Mapped[int] = mapped_column(Integer)
    ewc_lambda: Mapped[float] = mapped_column(Float)
    samples_seen: Mapped[int] = mapped_column(Integer)
    task_boundary: Mapped[bool] = mapped_column(Boolean, default=False)
    fisher_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    weights_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    gradient_mean_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    gradient_var_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class EwcTaskMemory(Base):
    """A task remembered by an EWC++ state (oldest first by slot). The Fisher and
    optimal weights are shared blobs: a task carried over costs one small row."""

    __tablename__ = "ewc_task_memory"

    ewc_state_id: Mapped[int] = mapped_column(ForeignKey("ewc_states.id"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(Integer)
    importance: Mapped[float] = mapped_column(Float)
    fisher_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))
    weights_blob_id: Mapped[int] = mapped_column(ForeignKey("vector_blobs.id"))


class Cycle(Base):
    """The audit record of one background learning cycle."""

    __tablename__ = "cycles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    parent_cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    trigger: Mapped[str] = mapped_column(String(16))  # a CycleTrigger
    status: Mapped[str] = mapped_column(String(16))  # a CycleStatus
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    elapsed_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    trajectories_processed: Mapped[int] = mapped_column(Integer, default=0)
    window_size: Mapped[int] = mapped_column(Integer, default=0)
    patterns_extracted: Mapped[int] = mapped_column(Integer, default=0)
    ewc_updated: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]]
    actor: Mapped[str] = mapped_column(String(200))
    # The slot a scheduled cycle ran for: unique, so two replicas firing for the
    # same slot produce one cycle. NULL for forced and manual cycles.
    scheduled_for: Mapped[dt.datetime | None] = mapped_column(unique=True)
    base_lora_version_id: Mapped[int | None] = mapped_column(ForeignKey("lora_versions.id"))
    ewc_state_id: Mapped[int | None] = mapped_column(ForeignKey("ewc_states.id"))
    # Consecutive idle scheduled ticks share one skipped row (migration *_coalesced_skips):
    # how many there were, and when the last one started (NULL: just one).
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_attempt_at: Mapped[dt.datetime | None]
    __table_args__ = (
        CheckConstraint(sql_in("trigger", CycleTrigger), name="trigger"),
        CheckConstraint(sql_in("status", CycleStatus), name="status"),
        Index("ix_cycles_status_id", "status", "id"),
    )


class Trajectory(Base):
    """One recorded interaction. Its vectors live in `trajectory_vectors`: this
    row stays narrow, so consuming a batch (an UPDATE of consumed_by_cycle_id)
    rewrites a few bytes per trajectory, not kilobytes."""

    __tablename__ = "trajectories"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    quality: Mapped[float] = mapped_column(Float)
    latency_us: Mapped[int | None] = mapped_column(BigInteger)
    model_route: Mapped[str | None] = mapped_column(String(200))
    context_ids: Mapped[list[str]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    consumed_by_cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    # Set by gc when it deleted this trajectory's vectors and steps (the
    # retention policy, `retention`); NULL while they are stored.
    vectors_dropped_at: Mapped[dt.datetime | None]
    __table_args__ = (
        CheckConstraint("quality >= 0 AND quality <= 1", name="quality_range"),
        # The retention window reads trajectories in (cycle, id) order.
        Index("ix_trajectories_consumed_by_cycle_id_id", "consumed_by_cycle_id", "id"),
    )


class TrajectoryVectors(Base):
    """A trajectory's query vector. Its pattern embedding (what clustering
    uses) is derived from the query and the steps by each cycle, not stored:
    writing it slowed recording (migration 0003)."""

    __tablename__ = "trajectory_vectors"

    trajectory_id: Mapped[int] = mapped_column(
        ForeignKey("trajectories.id", ondelete="CASCADE"), primary_key=True
    )
    query_embedding: Mapped[np.ndarray]


class TrajectoryStep(Base):
    __tablename__ = "trajectory_steps"

    trajectory_id: Mapped[int] = mapped_column(
        ForeignKey("trajectories.id", ondelete="CASCADE"), primary_key=True
    )
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    activations: Mapped[np.ndarray]
    attention_weights: Mapped[np.ndarray]
    reward: Mapped[float] = mapped_column(Float)
    layer_name: Mapped[str | None] = mapped_column(String(200))


class Pattern(Base):
    """A learned pattern; the patterns of the head cycle are the current ones."""

    __tablename__ = "patterns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id"), index=True)
    centroid: Mapped[np.ndarray]
    cluster_size: Mapped[int] = mapped_column(Integer)
    total_weight: Mapped[float] = mapped_column(Float)
    avg_quality: Mapped[float] = mapped_column(Float)
    pattern_type: Mapped[str] = mapped_column(String(16), default="general")
    access_count: Mapped[int] = mapped_column(Integer, default=0)
    last_accessed: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Set by prune_patterns: the pattern stays in history but is no longer served.
    pruned_at: Mapped[dt.datetime | None]


class PatternRoute(Base):
    """A pattern's member trajectories of one `model_route` (NULL: recorded
    without one), as the cycle that extracted the pattern aggregated them:
    how many, their mean quality and the sum of squared deviations from it
    (variance = sum_squared_deviations / (trajectory_count - 1)). Written with
    the pattern, never changed: they are current exactly when it is."""

    __tablename__ = "pattern_routes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pattern_id: Mapped[int] = mapped_column(ForeignKey("patterns.id"), index=True)
    model_route: Mapped[str | None] = mapped_column(String(200))
    trajectory_count: Mapped[int] = mapped_column(Integer)
    mean_quality: Mapped[float] = mapped_column(Float)
    sum_squared_deviations: Mapped[float] = mapped_column(Float)
    __table_args__ = (CheckConstraint("trajectory_count > 0", name="trajectory_count"),)


class MicroLoraSignal(Base):
    """Which micro-LoRA version absorbed each trajectory's learning signal. A row
    is written once per trajectory, under the head lock, so a signal is applied
    exactly once even when several processes (or a restarted one) flush. A
    quarantine deletes the rows of the signals it takes out of the head's line,
    so that a release leaves them to be applied again."""

    __tablename__ = "micro_lora_signals"

    trajectory_id: Mapped[int] = mapped_column(
        ForeignKey("trajectories.id", ondelete="CASCADE"), primary_key=True
    )
    micro_lora_version_id: Mapped[int] = mapped_column(ForeignKey("lora_versions.id"))


class Quarantine(Base):
    """A batch of trajectories taken out of learning (`store.quarantine`): kept,
    but never in a retention window nor applied to the micro-LoRA while the
    quarantine stands. Its members are rows of `quarantined_trajectories`;
    `release` ends it (the row stays, with who released it and why)."""

    __tablename__ = "quarantines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    selection: Mapped[dict[str, Any]]  # the criteria, as given
    trajectory_count: Mapped[int] = mapped_column(Integer)
    released_at: Mapped[dt.datetime | None]
    released_by: Mapped[str | None] = mapped_column(String(200))
    release_reason: Mapped[str | None] = mapped_column(Text)


class QuarantinedTrajectory(Base):
    """A trajectory of a quarantine. Rows are never removed by a release: a
    trajectory is quarantined while one of its quarantines is not released."""

    __tablename__ = "quarantined_trajectories"

    quarantine_id: Mapped[int] = mapped_column(ForeignKey("quarantines.id"), primary_key=True)
    trajectory_id: Mapped[int] = mapped_column(
        ForeignKey("trajectories.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class MicroLoraReplay(Base):
    """A micro-LoRA version written by a quarantine: it re-applies the signals
    that version `replay_of_id` (a flush, never itself a replay) absorbed,
    less the quarantined ones. Its signal group is therefore that flush's rows
    of `micro_lora_signals`."""

    __tablename__ = "micro_lora_replays"

    lora_version_id: Mapped[int] = mapped_column(ForeignKey("lora_versions.id"), primary_key=True)
    replay_of_id: Mapped[int] = mapped_column(ForeignKey("lora_versions.id"))
    quarantine_id: Mapped[int] = mapped_column(ForeignKey("quarantines.id"))


class StoreHead(Base):
    """One row: what is current. Only cycles, rollbacks, restores, quarantines,
    micro-LoRA flushes and imports move it."""

    __tablename__ = "store_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    base_lora_version_id: Mapped[int] = mapped_column(ForeignKey("lora_versions.id"))
    micro_lora_version_id: Mapped[int] = mapped_column(ForeignKey("lora_versions.id"))
    ewc_state_id: Mapped[int] = mapped_column(ForeignKey("ewc_states.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class RetentionPolicy(Base):
    """One row, or none (keep every vector): what gc may delete. A trajectory's
    vectors go once it is consumed, outside the retention window, and, for each
    limit set, older than `max_age_seconds` and consumed by a cycle beyond the
    last `horizon_cycles` completed ones. Changes are audit rows."""

    __tablename__ = "retention_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_age_seconds: Mapped[float | None] = mapped_column(Float)
    horizon_cycles: Mapped[int | None] = mapped_column(Integer)
    archive_dir: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200))
    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("max_age_seconds >= 0", name="max_age"),
        CheckConstraint("horizon_cycles >= 0", name="horizon"),
    )


class AuditEvent(Base):
    """Who moved the head, when, from where to where, and why (rollbacks,
    restores, quarantines, releases, imports). Cycles are audit records of
    their own."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    from_cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    to_cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


__all__ = [
    "AuditEvent",
    "Base",
    "Cycle",
    "EwcState",
    "EwcTaskMemory",
    "LoraVersion",
    "MicroLoraReplay",
    "MicroLoraSignal",
    "Pattern",
    "PatternRoute",
    "Quarantine",
    "QuarantinedTrajectory",
    "RetentionPolicy",
    "StoreHead",
    "StoreSettings",
    "Trajectory",
    "TrajectoryStep",
    "TrajectoryVectors",
    "VectorBlob",
]
