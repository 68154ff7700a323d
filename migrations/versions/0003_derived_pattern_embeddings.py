"""Pattern embeddings are derived, not stored: `trajectory_vectors` loses its
`pattern_embedding` column.

The embedding (docs/reference.md#trajectory-embedding) is a pure function of a
trajectory's query, step activations and rewards, all of which are kept. Each
cycle now computes it for its retention window, bit for bit as ingest did.
Writing it on every recorded trajectory cost ~1 KiB a row and a visible
share of the recording time (benchmarks/README.md, "Fourth round").

Downgrading computes the column again for every trajectory, with the same
function (sona_store.learning.embedding), so 0002 code finds what it wrote.

Revision ID: 0003_derived_pattern_embeddings
Revises: 0002_sql_views
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0003_derived_pattern_embeddings"
down_revision = "0002_sql_views"
branch_labels = None
depends_on = None

FLOAT32_VECTOR = sa.LargeBinary()  # little-endian float32 bytes, 4 per entry
CHUNK = 1000  # trajectories embedded at a time on downgrade


def upgrade() -> None:
    with op.batch_alter_table("trajectory_vectors", schema=None) as batch_op:
        batch_op.drop_column("pattern_embedding")


def downgrade() -> None:
    with op.batch_alter_table("trajectory_vectors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pattern_embedding", FLOAT32_VECTOR, nullable=True))
    _fill_pattern_embeddings(op.get_bind())
    with op.batch_alter_table("trajectory_vectors", schema=None) as batch_op:
        batch_op.alter_column("pattern_embedding", existing_type=FLOAT32_VECTOR, nullable=False)


_NEXT_IDS = sa.text(
    "SELECT trajectory_id FROM trajectory_vectors WHERE trajectory_id > :after"
    " ORDER BY trajectory_id LIMIT :n"
)
_ROWS = sa.text(
    "SELECT v.trajectory_id, v.query_embedding, s.activations, s.reward"
    " FROM trajectory_vectors v"
    " LEFT JOIN trajectory_steps s ON s.trajectory_id = v.trajectory_id"
    " WHERE v.trajectory_id BETWEEN :first AND :last"
    " ORDER BY v.trajectory_id, s.step_index"
)
_UPDATE = sa.text("UPDATE trajectory_vectors SET pattern_embedding = :e WHERE trajectory_id = :id")


# The trajectory embedding as it was when this revision was written, frozen here
# so that this migration does not change when sona_store.learning does: q plus
# the positive-reward-weighted step activations (cut or zero-padded to q's
# width), divided by the weight sum + 1 when that is positive, L2-normalised.
def trajectory_embeddings(
    queries: np.ndarray,
    step_owner: np.ndarray,
    step_activations: np.ndarray,
    step_rewards: np.ndarray,
) -> np.ndarray:
    n, dim = queries.shape
    out = np.array(queries, dtype=np.float32, copy=True)
    if len(step_owner):
        weights = np.maximum(step_rewards.astype(np.float32), np.float32(0.0))
        acts = np.zeros((len(step_owner), dim), dtype=np.float32)
        width = min(dim, step_activations.shape[1])
        acts[:, :width] = step_activations[:, :width]
        np.add.at(out, step_owner, acts * weights[:, None])
        sums = np.bincount(step_owner, weights=weights, minlength=n).astype(np.float32)
        positive = sums > 0
        out[positive] /= (sums[positive] + np.float32(1.0))[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    scale = np.where(norms > 1e-8, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
    return out * scale.astype(np.float32)[:, None]


def _fill_pattern_embeddings(bind: sa.Connection) -> None:
    after = 0
    while ids := bind.execute(_NEXT_IDS, {"after": after, "n": CHUNK}).scalars().all():
        rows = bind.execute(_ROWS, {"first": ids[0], "last": ids[-1]}).all()
        queries: dict[int, np.ndarray] = {}
        owners, activations, rewards = [], [], []
        for trajectory_id, query, acts, reward in rows:
            if trajectory_id not in queries:
                queries[trajectory_id] = np.frombuffer(bytes(query), dtype="<f4")
            if acts is not None:
                owners.append(len(queries) - 1)
                activations.append(np.frombuffer(bytes(acts), dtype="<f4"))
                rewards.append(reward)
        matrix = np.stack(list(queries.values()))
        embeddings = trajectory_embeddings(
            matrix,
            np.asarray(owners, dtype=np.int64),
            np.stack(activations) if activations else np.zeros((0, matrix.shape[1]), "<f4"),
            np.asarray(rewards, dtype=np.float64).astype(np.float32),
        )
        bind.execute(
            _UPDATE,
            [
                {"id": i, "e": e.astype("<f4").tobytes()}
                for i, e in zip(queries, embeddings, strict=True)
            ],
        )
        after = ids[-1]
