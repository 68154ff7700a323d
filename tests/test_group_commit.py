"""Live recording through the store's writer (group commit): what callers
get back, what a bad trajectory does, the asyncio path, the micro-LoRA on
the writer's thread, durability, a commit whose answer is lost, and a
PostgreSQL outage (a private server stopped and started again)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore, ValidationError
from sona_store.errors import RecordingTimeoutError, UnwrittenTrajectoriesError

from .helpers import make_trajectories, run_threads

CONFIG = SonaConfig(hidden_dim=8, micro_flush_threshold=10)


def _end(store: SonaStore, item: dict, **options):
    builder = store.begin_trajectory(item["query_embedding"])
    for step in item["steps"]:
        builder.add_step(step["activations"], step["attention_weights"], step["reward"])
    return store.end_trajectory(builder, item["quality"], **options)


def _ids(store: SonaStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT id FROM trajectories ORDER BY id")).scalars())


def _ledger(store: SonaStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT trajectory_id FROM micro_lora_signals ORDER BY trajectory_id")
            ).scalars()
        )


def test_wait_false_returns_a_future_and_flush_commits_it(db_url):
    store = SonaStore(db_url, CONFIG, max_delay=5.0)
    try:
        futures = [_end(store, item, wait=False) for item in make_trajectories(25, 8, seed=1)]
        assert all(isinstance(f, Future) for f in futures)
        applied = store.flush()  # commits the queue, then applies every signal
        ids = [f.result(timeout=0) for f in futures]
        assert ids == _ids(store) and len(set(ids)) == 25
        assert applied == 5  # 20 applied with the commits (threshold 10), 5 by flush
        assert _ledger(store) == ids
        assert store.stats()["recording"]["queued"] == 0
    finally:
        store.close()


def test_wait_true_returns_the_id_once_committed_from_many_threads(db_url):
    store = SonaStore(db_url, CONFIG)
    got: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for item in make_trajectories(20, 8, seed=seed):
                tid = _end(store, item)
                # Committed: another connection sees it at once.
                with store.engine.connect() as conn:
                    row = conn.execute(
                        sa.text("SELECT count(*) FROM trajectories WHERE id = :i"), {"i": tid}
                    ).scalar()
                assert row == 1
                got.append(tid)
        except BaseException as exc:
            errors.append(exc)

    run_threads(worker, range(6))
    try:
        assert not errors
        assert sorted(got) == _ids(store) and len(got) == 120
        store.flush()
        assert _ledger(store) == sorted(got)
        assert store.stats()["recording"]["groups_committed"] <= 120
    finally:
        store.close()


def test_a_bad_trajectory_raises_on_the_callers_thread_and_queues_nothing(db_url):
    store = SonaStore(db_url, CONFIG, max_delay=5.0)
    try:
        nan_step = store.begin_trajectory([0.1] * 8).add_step([float("nan")] * 8, [], 0.5)
        for wait in (True, False):
            with pytest.raises(ValidationError, match="activations"):
                store.end_trajectory(nan_step, 0.5, wait=wait)
            with pytest.raises(ValidationError, match="quality"):
                store.end_trajectory(store.begin_trajectory([0.1] * 8), 1.5, wait=wait)
        with pytest.raises(ValidationError, match="quality"):
            asyncio.run(store.end_trajectory_async(store.begin_trajectory([0.1] * 8), -1))
        with pytest.raises(ValidationError):
            store.record_trajectories([*make_trajectories(2, 8), {"quality": 0.5}])
        assert store.stats()["recording"]["queued"] == 0
        store.flush()
        assert _ids(store) == []
        assert store.stats()["recording"]["trajectories_committed"] == 0
    finally:
        store.close()


def test_async_recording_commits_and_the_event_loop_keeps_running(db_url):
    store = SonaStore(db_url, CONFIG)
    items = make_trajectories(30, 8, seed=3)

    async def main() -> tuple[list[int | None], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def one(item: dict) -> int | None:
            builder = store.begin_trajectory(item["query_embedding"])
            step = item["steps"][0]
            builder.add_step(step["activations"], step["attention_weights"], step["reward"])
            return await store.end_trajectory_async(builder, item["quality"])

        task = asyncio.create_task(ticker())
        ids = await asyncio.gather(*(one(item) for item in items))
        stop.set()
        await task
        return ids, ticks

    try:
        ids, ticks = asyncio.run(main())
        assert sorted(ids) == _ids(store) and len(set(ids)) == 30
        assert ticks > 1  # other tasks ran while the commits were awaited
        plain = SonaStore(db_url, background=False)
        try:
            builder = plain.begin_trajectory(items[0]["query_embedding"])
            assert asyncio.run(plain.end_trajectory_async(builder, 0.5)) == 31
        finally:
            plain.close()
    finally:
        store.close()


def test_micro_lora_flushes_run_on_the_writer(db_url, monkeypatch):
    from sona_store.services import instant

    threads: list[str] = []
    real = instant.apply_groups

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(instant, "apply_groups", spy)
    store = SonaStore(db_url, CONFIG)
    try:
        for item in make_trajectories(23, 8, seed=4):
            _end(store, item)
        store.flush()
        store.record_trajectories(make_trajectories(12, 8, seed=5))
        store.flush()
    finally:
        store.close()
    assert threads and set(threads) == {"sona-store-writer"}
    reopened = SonaStore(db_url)
    try:
        assert len(_ledger(reopened)) == 35
    finally:
        reopened.close()


def test_the_context_manager_commits_what_is_queued(db_url):
    with SonaStore(db_url, CONFIG, max_delay=10.0) as store:
        futures = [_end(store, item, wait=False) for item in make_trajectories(7, 8, seed=6)]
    assert [f.result(timeout=0) for f in futures] == list(range(1, 8))
    reopened = SonaStore(db_url)
    try:
        assert _ids(reopened) == list(range(1, 8))
    finally:
        reopened.close()


def test_recording_options_are_checked(db_url):
    from sona_store import ConfigError

    for options in (
        {"max_delay": -1},
        {"max_queued": 0},
        {"write_timeout": 0},
        {"durability": "fsync"},
    ):
        with pytest.raises(ConfigError):
            SonaStore(db_url, CONFIG, **options)


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("full", 2)])
def test_durability_sets_sqlites_synchronous(tmp_path, durability, level):
    store = SonaStore(f"sqlite:///{tmp_path / 'd.db'}", CONFIG, durability=durability)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
        assert len(store.record_trajectories(make_trajectories(3, 8))) == 3
    finally:
        store.close()


def test_a_commit_whose_answer_is_lost_is_not_written_twice(db_url, monkeypatch):
    """The COMMIT reached PostgreSQL, the answer did not (the connection
    died): the writer retries, finds the ids it drew already stored, and
    hands them back without inserting again. SQLite runs in-process: a
    COMMIT that raises there did not commit, so it has no such case."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's COMMIT either commits or raises")
    import psycopg

    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(3, 8, seed=7))
        dialect = store.engine.dialect
        real = dialect.do_commit
        armed = [True]

        def commit_then_lose_the_answer(dbapi_connection):
            real(dbapi_connection)
            if armed[0]:
                armed[0] = False
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(dialect, "do_commit", commit_then_lose_the_answer)
        ids = store.record_trajectories(make_trajectories(4, 8, seed=8))
        assert not armed[0]  # the failure happened
        monkeypatch.undo()
        assert store.stats()["recording"]["retries"] >= 1
        assert _ids(store) == list(range(1, 4)) + ids and len(ids) == 4
        store.flush()
        assert _ledger(store) == _ids(store)  # each signal applied exactly once
    finally:
        store.close()


def test_postgresql_outage_keeps_the_queue_and_writes_it_once(private_pg):
    """Server down: a waiting caller gets RecordingTimeoutError, queued
    trajectories wait; server back: all of them are written, once. Then
    close() with the server down raises, naming what it could not write."""
    private_pg.create_database("outage")
    url = private_pg.url("outage")
    store = SonaStore(url, CONFIG, write_timeout=2.0, max_queued=50)
    try:
        before = store.record_trajectories(make_trajectories(5, 8, seed=9))
        private_pg.stop()
        queued = [_end(store, item, wait=False) for item in make_trajectories(30, 8, seed=10)]
        with pytest.raises(RecordingTimeoutError, match="stays queued"):
            _end(store, make_trajectories(1, 8, seed=11)[0])  # stays queued: 31
        with pytest.raises(RecordingTimeoutError, match="queue stayed full"):
            store.record_trajectories(make_trajectories(20, 8, seed=12))  # nothing queued
        assert not any(f.done() for f in queued)
        assert store.recording_stats()["queued"] == 31
        private_pg.start()
        store.flush()
        ids = [f.result(timeout=0) for f in queued]
        stored = _ids(store)
        assert len(stored) == len(set(stored)) == 5 + 31
        assert set(before + ids) <= set(stored)
        assert _ledger(store) == stored
        private_pg.stop()
        for item in make_trajectories(3, 8, seed=13):
            _end(store, item, wait=False)
        with pytest.raises(UnwrittenTrajectoriesError, match="3 queued trajectories") as caught:
            store.close()
        assert caught.value.count == 3
    finally:
        if not private_pg.running():
            private_pg.start()
    reopened = SonaStore(url)
    try:
        assert len(_ids(reopened)) == 36
    finally:
        reopened.close()


def test_group_concat_keeps_each_trajectory_and_its_signal():
    from sona_store.services.validation import TrajectoryBatch, validate_batch

    items = make_trajectories(3, 8, seed=1, steps=2) + make_trajectories(2, 8, seed=2, steps=0)
    whole = validate_batch(items, CONFIG)
    parts = TrajectoryBatch.concat([validate_batch([item], CONFIG) for item in items])
    for name in ("queries", "qualities", "step_owner", "step_index", "activations", "signals"):
        assert np.array_equal(getattr(parts, name), getattr(whole, name)), name
    assert parts.attention == whole.attention and len(parts) == 5


def test_an_in_memory_store_records_on_the_callers_thread():
    """SQLAlchemy gives each thread its own in-memory SQLite database: such a
    store has no writer, and recording works as with background=False."""
    store = SonaStore("sqlite://", CONFIG)
    try:
        assert store.recording_stats() == {"background": False}
        assert store.record_trajectories(make_trajectories(3, 8)) == [1, 2, 3]
        assert _end(store, make_trajectories(1, 8)[0], wait=False).result(timeout=0) == 4
        assert store.flush() == 4
    finally:
        store.close()


def test_a_full_queue_blocks_callers_and_drops_nothing(db_url):
    """max_queued=4 with 6 threads queueing 30 each with wait=False: callers
    wait for room, and all 180 are committed once."""
    store = SonaStore(db_url, CONFIG, max_queued=4, max_delay=0.001)
    futures: list[Future] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for item in make_trajectories(30, 8, seed=seed):
                futures.append(_end(store, item, wait=False))
        except BaseException as exc:
            errors.append(exc)

    run_threads(worker, range(6))
    try:
        assert not errors
        store.flush()
        ids = sorted(f.result(timeout=0) for f in futures)
        assert ids == _ids(store) == list(range(1, 181))
    finally:
        store.close()
