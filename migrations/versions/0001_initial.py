"""Initial schema: trajectories and steps, cycles, patterns, versioned LoRA and
EWC++ state in shared vector blobs, the head pointer and the audit log.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Frozen column types: a migration must not change when the models do.
# SQLite auto-increments an INTEGER PRIMARY KEY only; PostgreSQL gets BIGINT.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIMESTAMP = sa.DateTime(timezone=True)  # stored as UTC (naive on SQLite)
FLOAT32_VECTOR = sa.LargeBinary()  # little-endian float32 bytes, 4 per entry

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_store_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_settings")),
    )
    op.create_table(
        "vector_blobs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_blobs")),
        sa.UniqueConstraint("sha256", name=op.f("uq_vector_blobs_sha256")),
    )
    op.create_table(
        "ewc_states",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("parent_id", BIG_ID, nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("ewc_lambda", sa.Float(), nullable=False),
        sa.Column("samples_seen", sa.Integer(), nullable=False),
        sa.Column("task_boundary", sa.Boolean(), nullable=False),
        sa.Column("fisher_blob_id", BIG_ID, nullable=False),
        sa.Column("weights_blob_id", BIG_ID, nullable=False),
        sa.Column("gradient_mean_blob_id", BIG_ID, nullable=False),
        sa.Column("gradient_var_blob_id", BIG_ID, nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["fisher_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_ewc_states_fisher_blob_id_vector_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["gradient_mean_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_ewc_states_gradient_mean_blob_id_vector_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["gradient_var_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_ewc_states_gradient_var_blob_id_vector_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["ewc_states.id"],
            name=op.f("fk_ewc_states_parent_id_ewc_states"),
        ),
        sa.ForeignKeyConstraint(
            ["weights_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_ewc_states_weights_blob_id_vector_blobs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ewc_states")),
    )
    op.create_table(
        "lora_versions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("tier", sa.String(length=8), nullable=False),
        sa.Column("parent_id", BIG_ID, nullable=True),
        sa.Column("layers", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("down_blob_id", BIG_ID, nullable=False),
        sa.Column("up_blob_id", BIG_ID, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.CheckConstraint("tier IN ('base', 'micro')", name=op.f("ck_lora_versions_tier")),
        sa.ForeignKeyConstraint(
            ["down_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_lora_versions_down_blob_id_vector_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["lora_versions.id"],
            name=op.f("fk_lora_versions_parent_id_lora_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["up_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_lora_versions_up_blob_id_vector_blobs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lora_versions")),
    )
    with op.batch_alter_table("lora_versions", schema=None) as batch_op:
        batch_op.create_index("ix_lora_versions_tier_id", ["tier", "id"], unique=False)

    op.create_table(
        "cycles",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("parent_cycle_id", BIG_ID, nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("finished_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("elapsed_seconds", sa.Float(), nullable=False),
        sa.Column("trajectories_processed", sa.Integer(), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("patterns_extracted", sa.Integer(), nullable=False),
        sa.Column("ewc_updated", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("scheduled_for", UTC_TIMESTAMP, nullable=True),
        sa.Column("base_lora_version_id", BIG_ID, nullable=True),
        sa.Column("ewc_state_id", BIG_ID, nullable=True),
        sa.CheckConstraint(
            "status IN ('completed', 'skipped', 'failed', 'rolled_back')",
            name=op.f("ck_cycles_status"),
        ),
        sa.CheckConstraint(
            "trigger IN ('forced', 'scheduled', 'manual')",
            name=op.f("ck_cycles_trigger"),
        ),
        sa.ForeignKeyConstraint(
            ["base_lora_version_id"],
            ["lora_versions.id"],
            name=op.f("fk_cycles_base_lora_version_id_lora_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["ewc_state_id"],
            ["ewc_states.id"],
            name=op.f("fk_cycles_ewc_state_id_ewc_states"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_cycle_id"],
            ["cycles.id"],
            name=op.f("fk_cycles_parent_cycle_id_cycles"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cycles")),
        sa.UniqueConstraint("scheduled_for", name=op.f("uq_cycles_scheduled_for")),
    )
    with op.batch_alter_table("cycles", schema=None) as batch_op:
        batch_op.create_index("ix_cycles_status_id", ["status", "id"], unique=False)

    op.create_table(
        "ewc_task_memory",
        sa.Column("ewc_state_id", BIG_ID, nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("importance", sa.Float(), nullable=False),
        sa.Column("fisher_blob_id", BIG_ID, nullable=False),
        sa.Column("weights_blob_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["ewc_state_id"],
            ["ewc_states.id"],
            name=op.f("fk_ewc_task_memory_ewc_state_id_ewc_states"),
        ),
        sa.ForeignKeyConstraint(
            ["fisher_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_ewc_task_memory_fisher_blob_id_vector_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["weights_blob_id"],
            ["vector_blobs.id"],
            name=op.f("fk_ewc_task_memory_weights_blob_id_vector_blobs"),
        ),
        sa.PrimaryKeyConstraint("ewc_state_id", "slot", name=op.f("pk_ewc_task_memory")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("at", UTC_TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("cycle_id", BIG_ID, nullable=True),
        sa.Column("from_cycle_id", BIG_ID, nullable=True),
        sa.Column("to_cycle_id", BIG_ID, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cycle_id"], ["cycles.id"], name=op.f("fk_audit_log_cycle_id_cycles")
        ),
        sa.ForeignKeyConstraint(
            ["from_cycle_id"],
            ["cycles.id"],
            name=op.f("fk_audit_log_from_cycle_id_cycles"),
        ),
        sa.ForeignKeyConstraint(
            ["to_cycle_id"], ["cycles.id"], name=op.f("fk_audit_log_to_cycle_id_cycles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "patterns",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("cycle_id", BIG_ID, nullable=False),
        sa.Column("centroid", FLOAT32_VECTOR, nullable=False),
        sa.Column("cluster_size", sa.Integer(), nullable=False),
        sa.Column("total_weight", sa.Float(), nullable=False),
        sa.Column("avg_quality", sa.Float(), nullable=False),
        sa.Column("pattern_type", sa.String(length=16), nullable=False),
        sa.Column("access_count", sa.Integer(), nullable=False),
        sa.Column("last_accessed", UTC_TIMESTAMP, nullable=True),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("pruned_at", UTC_TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["cycle_id"], ["cycles.id"], name=op.f("fk_patterns_cycle_id_cycles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patterns")),
    )
    with op.batch_alter_table("patterns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patterns_cycle_id"), ["cycle_id"], unique=False)

    op.create_table(
        "store_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cycle_id", BIG_ID, nullable=True),
        sa.Column("base_lora_version_id", BIG_ID, nullable=False),
        sa.Column("micro_lora_version_id", BIG_ID, nullable=False),
        sa.Column("ewc_state_id", BIG_ID, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_store_head_single_row")),
        sa.ForeignKeyConstraint(
            ["base_lora_version_id"],
            ["lora_versions.id"],
            name=op.f("fk_store_head_base_lora_version_id_lora_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["cycle_id"], ["cycles.id"], name=op.f("fk_store_head_cycle_id_cycles")
        ),
        sa.ForeignKeyConstraint(
            ["ewc_state_id"],
            ["ewc_states.id"],
            name=op.f("fk_store_head_ewc_state_id_ewc_states"),
        ),
        sa.ForeignKeyConstraint(
            ["micro_lora_version_id"],
            ["lora_versions.id"],
            name=op.f("fk_store_head_micro_lora_version_id_lora_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_head")),
    )
    op.create_table(
        "trajectories",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("latency_us", sa.BigInteger(), nullable=True),
        sa.Column("model_route", sa.String(length=200), nullable=True),
        sa.Column("context_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("consumed_by_cycle_id", BIG_ID, nullable=True),
        sa.CheckConstraint(
            "quality >= 0 AND quality <= 1", name=op.f("ck_trajectories_quality_range")
        ),
        sa.ForeignKeyConstraint(
            ["consumed_by_cycle_id"],
            ["cycles.id"],
            name=op.f("fk_trajectories_consumed_by_cycle_id_cycles"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trajectories")),
    )
    with op.batch_alter_table("trajectories", schema=None) as batch_op:
        batch_op.create_index(
            "ix_trajectories_consumed_by_cycle_id_id",
            ["consumed_by_cycle_id", "id"],
            unique=False,
        )

    op.create_table(
        "trajectory_vectors",
        sa.Column("trajectory_id", BIG_ID, nullable=False),
        sa.Column("query_embedding", FLOAT32_VECTOR, nullable=False),
        sa.Column("pattern_embedding", FLOAT32_VECTOR, nullable=False),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["trajectories.id"],
            name=op.f("fk_trajectory_vectors_trajectory_id_trajectories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trajectory_id", name=op.f("pk_trajectory_vectors")),
    )
    op.create_table(
        "trajectory_steps",
        sa.Column("trajectory_id", BIG_ID, nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("activations", FLOAT32_VECTOR, nullable=False),
        sa.Column("attention_weights", FLOAT32_VECTOR, nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("layer_name", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["trajectories.id"],
            name=op.f("fk_trajectory_steps_trajectory_id_trajectories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trajectory_id", "step_index", name=op.f("pk_trajectory_steps")),
    )
    op.create_table(
        "micro_lora_signals",
        sa.Column("trajectory_id", BIG_ID, nullable=False),
        sa.Column("micro_lora_version_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["micro_lora_version_id"],
            ["lora_versions.id"],
            name=op.f("fk_micro_lora_signals_micro_lora_version_id_lora_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["trajectories.id"],
            name=op.f("fk_micro_lora_signals_trajectory_id_trajectories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trajectory_id", name=op.f("pk_micro_lora_signals")),
    )


def downgrade() -> None:
    op.drop_table("micro_lora_signals")
    op.drop_table("trajectory_steps")
    op.drop_table("trajectory_vectors")
    with op.batch_alter_table("trajectories", schema=None) as batch_op:
        batch_op.drop_index("ix_trajectories_consumed_by_cycle_id_id")

    op.drop_table("trajectories")
    op.drop_table("store_head")
    with op.batch_alter_table("patterns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patterns_cycle_id"))

    op.drop_table("patterns")
    op.drop_table("audit_log")
    op.drop_table("ewc_task_memory")
    with op.batch_alter_table("cycles", schema=None) as batch_op:
        batch_op.drop_index("ix_cycles_status_id")

    op.drop_table("cycles")
    with op.batch_alter_table("lora_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_lora_versions_tier_id")

    op.drop_table("lora_versions")
    op.drop_table("ewc_states")
    op.drop_table("vector_blobs")
    op.drop_table("store_settings")
