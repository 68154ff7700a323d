"""Quarantine: a batch of trajectories taken out of learning, and the
micro-LoRA versions a quarantine re-applies.

Three new tables, nothing altered: `quarantines` (one row per quarantine,
released or not), `quarantined_trajectories` (its members) and
`micro_lora_replays` (which flush's signals a replayed micro-LoRA version
re-applies). New tables only, because a batch copy of `trajectories` on
SQLite would cascade-delete its vectors, steps and ledger rows (foreign keys
are on in the migration's transaction).

Revision ID: 0006
Revises: 0005_coalesced_skips (revision "0005")
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Frozen column types, as in 0001_initial.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIMESTAMP = sa.DateTime(timezone=True)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantines",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("trajectory_count", sa.Integer(), nullable=False),
        sa.Column("released_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("released_by", sa.String(length=200), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantines")),
    )
    op.create_table(
        "quarantined_trajectories",
        sa.Column("quarantine_id", BIG_ID, nullable=False),
        sa.Column("trajectory_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["quarantine_id"],
            ["quarantines.id"],
            name=op.f("fk_quarantined_trajectories_quarantine_id_quarantines"),
        ),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["trajectories.id"],
            name=op.f("fk_quarantined_trajectories_trajectory_id_trajectories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "quarantine_id", "trajectory_id", name=op.f("pk_quarantined_trajectories")
        ),
    )
    op.create_index(
        op.f("ix_quarantined_trajectories_trajectory_id"),
        "quarantined_trajectories",
        ["trajectory_id"],
    )
    op.create_table(
        "micro_lora_replays",
        sa.Column("lora_version_id", BIG_ID, nullable=False),
        sa.Column("replay_of_id", BIG_ID, nullable=False),
        sa.Column("quarantine_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["lora_version_id"],
            ["lora_versions.id"],
            name=op.f("fk_micro_lora_replays_lora_version_id_lora_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["replay_of_id"],
            ["lora_versions.id"],
            name=op.f("fk_micro_lora_replays_replay_of_id_lora_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["quarantine_id"],
            ["quarantines.id"],
            name=op.f("fk_micro_lora_replays_quarantine_id_quarantines"),
        ),
        sa.PrimaryKeyConstraint("lora_version_id", name=op.f("pk_micro_lora_replays")),
    )


def downgrade() -> None:
    op.drop_table("micro_lora_replays")
    op.drop_index(
        op.f("ix_quarantined_trajectories_trajectory_id"), table_name="quarantined_trajectories"
    )
    op.drop_table("quarantined_trajectories")
    op.drop_table("quarantines")
