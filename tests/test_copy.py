"""Bulk inserts: binary COPY on PostgreSQL (`db.copy`), executemany on SQLite.
Either way every column reads back as recorded, hostile text included, ids
come back ascending even when the sequence hands them out apart, and a
failing insert raises SQLAlchemy's exception and leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db import trajectories
from sona_store.db.engine import connection_transaction
from sona_store.services.validation import validate_batch

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, micro_flush_threshold=10)

HOSTILE = [
    "'); DROP TABLE trajectories; --",
    'quote " and \\ backslash',
    "tab\tnewline\nend",
    "ünïcödé ✓ 名前",
    "\\N",  # COPY's text-format NULL marker, sent as data in the binary format
]


def _rows(store: SonaStore) -> list[tuple]:
    with store.engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "SELECT t.id, t.quality, t.latency_us, t.model_route, t.context_ids,"
                    " v.query_embedding, s.step_index, s.activations, s.attention_weights,"
                    " s.reward, s.layer_name FROM trajectories t"
                    " JOIN trajectory_vectors v ON v.trajectory_id = t.id"
                    " JOIN trajectory_steps s ON s.trajectory_id = t.id"
                    " ORDER BY t.id, s.step_index"
                )
            )
        ]


def _expected(ids: list[int], items: list[dict]) -> list[tuple]:
    out = []
    for tid, item in zip(ids, items, strict=True):
        query = np.asarray(item["query_embedding"], dtype=np.float32).tobytes()
        for index, step in enumerate(item["steps"]):
            out.append(
                (
                    tid,
                    item["quality"],
                    item.get("latency_us"),
                    item.get("model_route"),
                    item.get("context_ids", []),
                    query,
                    index,
                    np.asarray(step["activations"], dtype=np.float32).tobytes(),
                    np.asarray(step["attention_weights"], dtype=np.float32).tobytes(),
                    step["reward"],
                    step.get("layer_name"),
                )
            )
    return out


def _as_stored(row: tuple) -> tuple:
    """bytea/BLOB as bytes, JSON text as its value (SQLite returns text)."""
    import json

    values = list(row)
    for i in (5, 7, 8):
        values[i] = bytes(values[i])
    if isinstance(values[4], str):
        values[4] = json.loads(values[4])
    return tuple(values)


def test_every_column_reads_back_as_recorded(db_url):
    items = make_trajectories(12, 8, seed=1, steps=3)
    for i, item in enumerate(items):
        text = HOSTILE[i % len(HOSTILE)]
        if i % 2:
            item.update(model_route=text, latency_us=1000 + i, context_ids=[text, "doc"])
        item["steps"][i % 3]["layer_name"] = text
        item["steps"][1]["attention_weights"] = [0.25] * (i + 1)  # rows of unequal width
    store = SonaStore(db_url, CONFIG)
    try:
        ids = store.record_trajectories(items)
        rows = [_as_stored(r) for r in _rows(store)]
    finally:
        store.close()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert rows == _expected(ids, items)


def test_postgresql_inserts_by_binary_copy_and_sqlite_by_executemany(db_url, monkeypatch):
    copied: list[str] = []
    original = trajectories.copy_columns

    def spy(connection, table, columns):
        copied.append(table.name)
        original(connection, table, columns)

    monkeypatch.setattr(trajectories, "copy_columns", spy)
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(5, 8, seed=2))
    finally:
        store.close()
    if db_url.startswith("postgresql"):
        assert copied == ["trajectories", "trajectory_vectors", "trajectory_steps"]
    else:
        assert copied == []


def test_ids_drawn_apart_come_back_ascending_and_match_their_rows(db_url):
    """Another writer drawing from the sequence at the same moment leaves gaps
    in a batch's ids; an increment of 3 makes every id of the batch apart."""
    store = SonaStore(db_url, CONFIG)
    try:
        first = store.record_trajectories(make_trajectories(2, 8, seed=3))
        if db_url.startswith("postgresql"):
            with store.engine.begin() as conn:
                conn.execute(sa.text("ALTER SEQUENCE trajectories_id_seq INCREMENT BY 3"))
        items = make_trajectories(6, 8, seed=4)
        ids = store.record_trajectories(items)
        rows = [_as_stored(r) for r in _rows(store)]
    finally:
        store.close()
    step = 3 if db_url.startswith("postgresql") else 1
    assert ids == list(range(first[-1] + step, first[-1] + 6 * step + 1, step))
    assert rows[2:] == _expected(ids, items)


def test_a_failing_insert_raises_and_leaves_nothing(db_url):
    """Vectors for trajectories that do not exist break the foreign key: the
    insert raises SQLAlchemy's IntegrityError (from the COPY on PostgreSQL)
    and the transaction's earlier rows are rolled back with it."""
    store = SonaStore(db_url, CONFIG)
    try:
        batch = validate_batch(make_trajectories(3, 8, seed=5), store.config)
        with (
            pytest.raises(sa.exc.IntegrityError),
            connection_transaction(store.engine, immediate=True) as connection,
        ):
            trajectories.insert_batch(connection, batch)
            from sona_store.db.driver import Driver

            trajectories.insert_vectors(Driver(connection), [10**9, 10**9 + 1, 10**9 + 2], batch)
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM trajectories")).scalar() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM trajectory_vectors")).scalar() == 0
        assert store.record_trajectories(make_trajectories(2, 8, seed=6))  # still usable
    finally:
        store.close()
