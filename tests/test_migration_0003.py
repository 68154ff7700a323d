"""Migration 0003: pattern embeddings are derived by each cycle instead of
stored. Down, the column comes back holding exactly what 0002 code stored at
ingest; up again, the cycle's window sees exactly those embeddings."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db import schema, trajectories
from sona_store.db.engine import create_store_engine, transaction
from sona_store.learning.embedding import trajectory_embeddings
from sona_store.services.validation import validate_batch

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3)


def _items() -> list[dict]:
    """Trajectories of no step, one and three, some rewards negative."""
    items = make_trajectories(4, 8, seed=1, steps=0)
    items += make_trajectories(9, 8, seed=2, steps=1)
    items += make_trajectories(5, 8, seed=3, steps=3)
    for item in items[6:12]:
        item["steps"][0]["reward"] = -item["steps"][0]["reward"]
    return items


def _as_0002_stored(items: list[dict]) -> np.ndarray:
    """What 0002 code wrote at ingest: the embeddings of the validated batch."""
    batch = validate_batch(items, CONFIG)
    return trajectory_embeddings(
        batch.queries, batch.step_owner, batch.activations, batch.rewards.astype(np.float32)
    )


def _column_names(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns("trajectory_vectors")}


def test_down_restores_the_stored_embeddings_and_up_derives_the_same(db_url):
    items = _items()
    store = SonaStore(db_url, CONFIG)
    try:
        ids = store.record_trajectories(items)
        assert store.run_cycle(force=True).status == "completed"
    finally:
        store.close()
    engine = create_store_engine(db_url)
    try:
        assert "pattern_embedding" not in _column_names(engine)
        schema.downgrade(engine, "0002_sql_views")
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    sa.text("SELECT trajectory_id, pattern_embedding FROM trajectory_vectors")
                ).all()
            )
        assert sorted(stored) == ids
        as_stored = np.array([np.frombuffer(bytes(stored[i]), "<f4") for i in ids])
        assert np.array_equal(as_stored, _as_0002_stored(items))

        schema.upgrade(engine)
        assert schema.database_revision(engine) == schema.head_revision()
        assert "pattern_embedding" not in _column_names(engine)
        with transaction(engine) as session:
            window_ids, embeddings, _ = trajectories.load_window(session, 100, 8)
        position = {trajectory_id: i for i, trajectory_id in enumerate(ids)}
        assert sorted(window_ids.tolist()) == ids
        assert np.array_equal(embeddings, as_stored[[position[i] for i in window_ids.tolist()]])
    finally:
        engine.dispose()


def test_upgrade_keeps_every_trajectory_and_the_store_works(db_url):
    store = SonaStore(db_url, CONFIG)
    try:
        ids = store.record_trajectories(_items())
    finally:
        store.close()
    engine = create_store_engine(db_url)
    counts = "SELECT (SELECT count(*) FROM trajectories), (SELECT count(*) FROM trajectory_steps)"
    try:
        with engine.connect() as conn:
            before = conn.execute(sa.text(counts)).one()
            queries = conn.execute(sa.text("SELECT query_embedding FROM trajectory_vectors")).all()
        schema.downgrade(engine, "0002_sql_views")
        schema.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text(counts)).one() == before
            after = conn.execute(sa.text("SELECT query_embedding FROM trajectory_vectors")).all()
            assert [bytes(r[0]) for r in after] == [bytes(r[0]) for r in queries]
    finally:
        engine.dispose()
    store = SonaStore(db_url, CONFIG, create=False)
    try:
        result = store.run_cycle(force=True)
        assert result.trajectories_processed == len(ids)
        assert result.patterns_extracted > 0
    finally:
        store.close()
