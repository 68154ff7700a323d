"""Idle scheduled ticks share one row: `cycles` gains `attempts` and
`last_attempt_at`.

A scheduled tick that finds too few trajectories writes a `skipped` cycle. At
a 60 s interval an idle store gained 1,440 such rows a day. From this revision
on, a skipped scheduled tick that follows another one (same head, same
configuration, nothing in between) adds itself to that row: `attempts` counts
the ticks, `started_at` is the first one's start, `last_attempt_at` the last
one's, `scheduled_for` the last slot (the schedule's anchor). Forced and manual
cycles, failures and completed cycles keep a row each.

Existing rows get `attempts` = 1 and no `last_attempt_at`: nothing is merged
or deleted. Downgrading drops the two columns; a merged row then reads as its
first tick (SQLite needs 3.35 or later for DROP COLUMN). Neither column is in
a view, so the views of 0002 stay as they are.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)  # stored as UTC (naive on SQLite), as in 0001


def upgrade() -> None:
    op.add_column("cycles", sa.Column("attempts", sa.Integer(), server_default="1", nullable=False))
    op.add_column("cycles", sa.Column("last_attempt_at", UTC_TIMESTAMP, nullable=True))


def downgrade() -> None:
    op.drop_column("cycles", "last_attempt_at")
    op.drop_column("cycles", "attempts")
