"""Route statistics per pattern: the table `pattern_routes` and the view
`current_pattern_routes`.

Each cycle writes, for every pattern it extracts, one row per `model_route`
among the pattern's member trajectories (NULL: recorded without a route):
count, mean quality and sum of squared deviations. Patterns extracted before
this revision have none (their members were not kept): the next cycle writes
them for its own patterns.

The view names `patterns` and `store_head`: like 0002's views, a later
revision that batch-alters those tables on SQLite must drop it first and
create it again afterwards (`drop_view()` / `create_view()` below).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen column types (as 0001's): SQLite auto-increments INTEGER keys only.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The route statistics of the patterns served now, with each row's sample
# variance (NULL for a single trajectory).
CURRENT_PATTERN_ROUTES = """
    SELECT r.pattern_id, p.cycle_id, r.model_route, r.trajectory_count, r.mean_quality,
           r.sum_squared_deviations,
           CASE WHEN r.trajectory_count > 1
                THEN r.sum_squared_deviations / (r.trajectory_count - 1) END AS quality_variance,
           p.cluster_size, p.avg_quality AS pattern_quality
    FROM pattern_routes AS r
    JOIN patterns AS p ON p.id = r.pattern_id
    JOIN store_head AS h ON h.cycle_id = p.cycle_id
    WHERE p.pruned_at IS NULL
"""


def create_view() -> None:
    op.execute(f"CREATE VIEW current_pattern_routes AS {CURRENT_PATTERN_ROUTES.strip()}")


def drop_view() -> None:
    op.execute("DROP VIEW IF EXISTS current_pattern_routes")


def upgrade() -> None:
    op.create_table(
        "pattern_routes",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("pattern_id", BIG_ID, nullable=False),
        sa.Column("model_route", sa.String(length=200), nullable=True),
        sa.Column("trajectory_count", sa.Integer(), nullable=False),
        sa.Column("mean_quality", sa.Float(), nullable=False),
        sa.Column("sum_squared_deviations", sa.Float(), nullable=False),
        sa.CheckConstraint("trajectory_count > 0", name=op.f("ck_pattern_routes_trajectory_count")),
        sa.ForeignKeyConstraint(
            ["pattern_id"], ["patterns.id"], name=op.f("fk_pattern_routes_pattern_id_patterns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pattern_routes")),
    )
    with op.batch_alter_table("pattern_routes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pattern_routes_pattern_id"), ["pattern_id"], unique=False
        )
    create_view()


def downgrade() -> None:
    drop_view()
    with op.batch_alter_table("pattern_routes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pattern_routes_pattern_id"))
    op.drop_table("pattern_routes")
