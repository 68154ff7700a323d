"""Retention: a stored policy for gc, and a mark on trajectories whose vectors
gc deleted.

`retention_policy` holds at most one row (none: keep every vector).
`trajectories.vectors_dropped_at` is NULL while a trajectory's vectors and
steps are stored; gc sets it when it deletes them, and the metadata row stays.
Adding a nullable column rewrites nothing, on SQLite or PostgreSQL.

Downgrading is refused while some trajectory has lost its vectors: code
before this revision reads every consumed trajectory's vectors.

Revision ID: 0004
Revises: 0003_derived_pattern_embeddings
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003_derived_pattern_embeddings"
branch_labels = None
depends_on = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)  # stored as UTC (naive on SQLite)


def upgrade() -> None:
    # A plain ADD COLUMN on both databases (batch mode would copy the table).
    op.add_column("trajectories", sa.Column("vectors_dropped_at", UTC_TIMESTAMP, nullable=True))
    op.create_table(
        "retention_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("max_age_seconds", sa.Float(), nullable=True),
        sa.Column("horizon_cycles", sa.Integer(), nullable=True),
        sa.Column("archive_dir", sa.Text(), nullable=True),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_retention_policy_single_row")),
        sa.CheckConstraint("max_age_seconds >= 0", name=op.f("ck_retention_policy_max_age")),
        sa.CheckConstraint("horizon_cycles >= 0", name=op.f("ck_retention_policy_horizon")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_policy")),
    )


def downgrade() -> None:
    dropped = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM trajectories WHERE vectors_dropped_at IS NOT NULL")
    )
    if dropped:
        raise RuntimeError(
            f"{dropped} trajectories have no vectors (gc deleted them); revisions before "
            "0004 cannot read such a store. Put them back first: "
            "sona-store ingest --restore ARCHIVE"
        )
    op.drop_table("retention_policy")
    if op.get_bind().dialect.name == "sqlite":
        # Not batch mode: copying `trajectories` means dropping it, and with
        # foreign keys on, that cascades to its vectors, steps and signals.
        op.execute("ALTER TABLE trajectories DROP COLUMN vectors_dropped_at")  # SQLite >= 3.35
    else:
        op.drop_column("trajectories", "vectors_dropped_at")
