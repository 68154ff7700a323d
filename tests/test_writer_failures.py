"""The writer's failures that are not an outage: a full disk, and a job
that fails by itself.

A full disk is simulated honestly on each backend: on SQLite every
connection checked out while the disk is "full" has `PRAGMA max_page_count`
at the file's current size (SQLite raises its real SQLITE_FULL when a write
needs a new page); on PostgreSQL a trigger raises SQLSTATE 53100 (disk_full),
the error a server out of space raises. Freeing the space lifts either."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.errors import RecordingTimeoutError

from .helpers import make_trajectories

DIM = 64
QUEUED = 200  # trajectories enough to need new pages
CONFIG = SonaConfig(hidden_dim=DIM, micro_flush_threshold=10)

_PG_FULL = """
CREATE FUNCTION sona_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device'
    USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER sona_test_disk_full BEFORE INSERT ON trajectory_vectors
    FOR EACH STATEMENT EXECUTE FUNCTION sona_test_disk_full();
"""
_PG_FREED = """
DROP TRIGGER sona_test_disk_full ON trajectory_vectors;
DROP FUNCTION sona_test_disk_full();
"""


@contextmanager
def _full_disk(store: SonaStore) -> Iterator[None]:
    """The disk is full inside the block."""
    engine = store.engine
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql(_PG_FULL)
        try:
            yield
        finally:
            with engine.begin() as conn:
                conn.exec_driver_sql(_PG_FREED)
        return
    full = True

    def limit(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages if full else 2**31}")
        cursor.close()

    sa.event.listen(engine, "checkout", limit)
    store._writer._release()  # its next connection is checked out with the limit
    try:
        yield
    finally:
        full = False  # the connection checked out for the next attempt has room


def _stored(store: SonaStore, table: str = "trajectories") -> list[int]:
    column = "id" if table == "trajectories" else "trajectory_id"
    with store.engine.connect() as conn:
        return list(conn.exec_driver_sql(f"SELECT {column} FROM {table} ORDER BY 1").scalars())


def _end(store: SonaStore, item: dict, **options: Any) -> Any:
    builder = store.begin_trajectory(item["query_embedding"])
    for step in item["steps"]:
        builder.add_step(step["activations"], step["attention_weights"], step["reward"])
    return store.end_trajectory(builder, item["quality"], **options)


def test_a_full_disk_keeps_the_queue_and_writes_it_once_space_is_freed(db_url):
    """A full disk is outlasted like an outage: nothing queued is failed or
    dropped (a `wait=False` caller would never hear of it); a waiting
    caller gets RecordingTimeoutError; once space is freed, every queued
    trajectory is written once, with its micro-LoRA signal."""
    # max_delay: the queued trajectories wait for the waiting caller's job, so
    # the first attempt holds all of them (enough to need new pages). The
    # timeout outlasts the retry backoff (2 s at most) for the final flush.
    store = SonaStore(db_url, CONFIG, write_timeout=3.0, max_delay=10.0)
    try:
        before = store.record_trajectories(make_trajectories(3, DIM, seed=1))
        with _full_disk(store):
            queued = [_end(store, t, wait=False) for t in make_trajectories(QUEUED, DIM, seed=2)]
            with pytest.raises(RecordingTimeoutError, match="stays queued"):
                _end(store, make_trajectories(1, DIM, seed=3)[0])
            assert not any(f.done() for f in queued)
            assert store.recording_stats()["queued"] == QUEUED + 1
            assert "full" in (store.recording_stats()["last_error"] or "").lower()
        store.flush()
        ids = [f.result(timeout=0) for f in queued]
        stored = _stored(store)
        assert len(stored) == len(set(stored)) == 3 + QUEUED + 1
        assert set(before + ids) <= set(stored)
        assert _stored(store, "micro_lora_signals") == stored
        assert store.recording_stats()["last_error"] is None
    finally:
        store.close()


def test_a_job_that_fails_by_itself_fails_alone(db_url, monkeypatch):
    """An error no retry outlasts (here a bug, injected into the group's
    insert when one caller's trajectory is in it) fails only that caller's
    job: the writer writes the group's jobs one by one, and the others
    commit with their signals."""
    store = SonaStore(db_url, CONFIG, max_delay=10.0)
    writer = store._writer
    commit = writer._commit
    groups: list[int] = []
    poisoned = 0.123

    def failing(connection: Any, items: list[Any], ids: Any) -> list[int]:
        groups.append(len(items))
        if any(getattr(item, "quality", None) == poisoned for item in items):
            raise RuntimeError("a bug that only this trajectory's group meets")
        return commit(connection, items, ids)

    monkeypatch.setattr(writer, "_commit", failing)
    try:
        items = make_trajectories(3, DIM, seed=4)
        items[1]["quality"] = poisoned
        futures = [_end(store, item, wait=False) for item in items]
        store.flush()  # the writer takes the three jobs as one group
        assert groups[0] == 3
        good = [futures[0].result(timeout=0), futures[2].result(timeout=0)]
        with pytest.raises(RuntimeError, match="only this trajectory"):
            futures[1].result(timeout=0)
        assert _stored(store) == sorted(good)
        assert _stored(store, "micro_lora_signals") == sorted(good)
    finally:
        store.close()
