"""The recording hot path: a batch and its due micro-LoRA flush commit
together, a failed batch gives back what it took, and new SQLite files get
the page size the trajectory rows were measured with."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from sona_store import SonaConfig, SonaStore
from sona_store.db.engine import SQLITE_PAGE_SIZE

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, micro_flush_threshold=10)


def _count(store: SonaStore, sql: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def _flush_versions(store: SonaStore) -> int:
    return _count(store, "SELECT count(*) FROM lora_versions WHERE source = 'flush'")


def test_a_batch_and_its_flush_are_one_commit(db_url):
    store = SonaStore(db_url, CONFIG)
    commits: list[int] = []
    try:
        store.record_trajectories(make_trajectories(3, 8, seed=1))  # adopts (reads) once
        event.listen(store.engine, "commit", lambda _conn: commits.append(1))
        ids = store.record_trajectories(make_trajectories(17, 8, seed=2))
        assert len(commits) == 1
        # 3 queued + 17 fresh: two whole groups applied with the batch, 0 left.
        assert _flush_versions(store) == 1
        assert _count(store, "SELECT count(*) FROM micro_lora_signals") == 20
        assert store.pending_signals == 0
        head = store.head()["micro_lora_version_id"]
        applied = _count(
            store,
            f"SELECT count(*) FROM micro_lora_signals WHERE micro_lora_version_id = {head}",
        )
        assert applied == 20 and len(ids) == 17
    finally:
        store.close()


def test_a_failed_batch_gives_back_the_signals_it_took(db_url, monkeypatch):
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(5, 8, seed=1))
        assert store.pending_signals == 5
        original = store._instant.record

        def record_then_fail(session, fresh, inflight, *rest):
            original(session, fresh, inflight, *rest)  # the flush of 5 queued + 5 fresh succeeds...
            raise RuntimeError("the batch's transaction fails after its flush")

        monkeypatch.setattr(store._instant, "record", record_then_fail)
        try:
            store.record_trajectories(make_trajectories(5, 8, seed=2))
        except RuntimeError:
            pass
        else:
            raise AssertionError("the failure was swallowed")
        monkeypatch.undo()
        # ...but nothing of it commits: the 5 earlier signals are queued again,
        # the 5 trajectories that were never stored have none.
        assert _count(store, "SELECT count(*) FROM trajectories") == 5
        assert _flush_versions(store) == 0
        assert store.pending_signals == 5
        store.record_trajectories(make_trajectories(5, 8, seed=3))
        assert _flush_versions(store) == 1
        assert _count(store, "SELECT count(*) FROM micro_lora_signals") == 10
        assert store.pending_signals == 0
    finally:
        store.close()


def test_a_new_sqlite_store_has_16_kib_pages(tmp_path):
    store = SonaStore(f"sqlite:///{tmp_path / 'new.db'}", CONFIG)
    try:
        assert _count(store, "PRAGMA page_size") == SQLITE_PAGE_SIZE == 16384
    finally:
        store.close()


def test_an_existing_sqlite_file_keeps_its_page_size(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("CREATE TABLE unrelated (x INTEGER)")  # the file now has pages
    conn.close()
    store = SonaStore(f"sqlite:///{path}", CONFIG)
    try:
        assert _count(store, "PRAGMA page_size") == 4096
        assert len(store.record_trajectories(make_trajectories(3, 8))) == 3
    finally:
        store.close()


def _checkpoints(store: SonaStore) -> int:
    return store.stats()["recording"]["wal_checkpoints"]


def test_wal_is_checkpointed_by_the_writer_when_recording_pauses(tmp_path):
    """After recording, the store's writer copies the log into the database
    file: nothing is left for a committing connection's own checkpoint."""
    import time

    from sona_store.db.checkpoint import wal_checkpoint

    store = SonaStore(f"sqlite:///{tmp_path / 'wal.db'}", CONFIG)
    try:
        before = _checkpoints(store)
        store.record_trajectories(make_trajectories(50, 8))
        deadline = time.monotonic() + 10
        while _checkpoints(store) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _checkpoints(store) > before
        busy, logged, copied = wal_checkpoint(store.engine)
        assert busy == 0 and logged == copied  # the log is fully in the file
    finally:
        store.close()


def test_checkpoints_wait_for_the_commits_to_pause(tmp_path, monkeypatch):
    """A checkpoint during a burst of commits slows the writer: it waits
    until commits pause, then copies the whole log."""
    import time

    from sona_store.db.checkpoint import wal_checkpoint
    from sona_store.services import writer

    monkeypatch.setattr(writer, "QUIET_S", 1.0)
    store = SonaStore(f"sqlite:///{tmp_path / 'burst.db'}", CONFIG)
    try:
        before = _checkpoints(store)
        burst_ends = time.monotonic() + 1.5
        while time.monotonic() < burst_ends:  # a commit every ~20 ms
            store.record_trajectories(make_trajectories(2, 8))
            time.sleep(0.02)
        assert _checkpoints(store) == before
        deadline = time.monotonic() + 10
        while _checkpoints(store) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _checkpoints(store) == before + 1
        busy, logged, copied = wal_checkpoint(store.engine)
        assert busy == 0 and logged == copied
    finally:
        store.close()


def test_a_cycle_alone_has_its_log_checkpointed(tmp_path):
    """A store that only runs cycles (a service) still has the writer copy
    the log into the file once its commits pause."""
    import time

    from sona_store.db.checkpoint import wal_checkpoint

    url = f"sqlite:///{tmp_path / 'cycles.db'}"
    recorder = SonaStore(url, CONFIG, background=False)
    recorder.record_trajectories(make_trajectories(40, 8))
    recorder.close()
    store = SonaStore(url)
    try:
        before = _checkpoints(store)
        assert store.run_cycle(force=True).status == "completed"
        deadline = time.monotonic() + 10
        while _checkpoints(store) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _checkpoints(store) > before
        busy, logged, copied = wal_checkpoint(store.engine)
        assert busy == 0 and logged == copied
    finally:
        store.close()


def test_sqlite_checkpoints_in_a_commit_only_past_a_large_log(tmp_path):
    from sona_store.db.engine import SQLITE_AUTOCHECKPOINT_PAGES

    store = SonaStore(f"sqlite:///{tmp_path / 'bound.db'}", CONFIG)
    try:
        with store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert pages == SQLITE_AUTOCHECKPOINT_PAGES > 1000
    finally:
        store.close()


def _threads() -> set[object]:
    import threading

    return set(threading.enumerate())


def test_a_store_owns_one_background_thread_or_none(db_url):
    """The writer is the store's one thread (recording, flushes, access
    counts, checkpoints), gone after close; `background=False` starts none
    and records on the caller's thread."""
    before = _threads()
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(3, 8))
        store.find_patterns([0.1] * 8)
        store.flush()
        assert [t.name for t in _threads() - before] == ["sona-store-writer"]
    finally:
        store.close()
    assert _threads() - before == set()
    plain = SonaStore(db_url, background=False)
    try:
        assert len(plain.record_trajectories(make_trajectories(3, 8))) == 3
        assert plain.end_trajectory(plain.begin_trajectory([0.1] * 8), 0.5) == 7
        queued = plain.end_trajectory(plain.begin_trajectory([0.1] * 8), 0.5, wait=False)
        assert queued.result(timeout=0) == 8  # committed already, on this thread
        assert plain.flush() == 5  # 3 + 1 + 1 signals pending (threshold 10)
        assert _threads() - before == set()
        assert plain.stats()["recording"] == {"background": False}
    finally:
        plain.close()


def test_the_ledger_names_exactly_the_applied_trajectories(db_url):
    """A batch's own ids go in as one range insert; queued ones one by one.
    Either way: one ledger row per applied trajectory, no other."""
    store = SonaStore(db_url, CONFIG)
    try:
        first = store.record_trajectories(make_trajectories(25, 8, seed=1))  # 20 applied
        second = store.record_trajectories(make_trajectories(15, 8, seed=2))  # 5 + 15
        with store.engine.connect() as conn:
            ledger = conn.execute(
                sa.text(
                    "SELECT trajectory_id, micro_lora_version_id FROM micro_lora_signals"
                    " ORDER BY trajectory_id"
                )
            ).all()
        assert [row[0] for row in ledger] == first + second
        versions = [row[1] for row in ledger]
        assert len(set(versions[:20])) == 1 and len(set(versions[20:])) == 1
        assert versions[0] != versions[-1]
    finally:
        store.close()


def test_constant_columns_are_stored_as_their_values(db_url):
    """A column one value fills for the whole batch goes in as a SQL literal
    (NULL, '[]', 0); a mixed column is bound row by row. Either way the rows
    read back as recorded."""
    store = SonaStore(db_url, CONFIG)
    try:
        plain = make_trajectories(3, 8, seed=4, quality=0.0)
        for item in plain:
            item["steps"][0]["reward"] = 0
        mixed = make_trajectories(4, 8, seed=5, steps=2)
        mixed[1].update(model_route="model-a", latency_us=12, context_ids=["doc-1"])
        mixed[2]["steps"][1]["layer_name"] = "layer-3"
        ids = store.record_trajectories(plain) + store.record_trajectories(mixed)
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT t.id, t.quality, t.latency_us, t.model_route, t.context_ids,"
                    " s.step_index, s.reward, s.layer_name FROM trajectories t"
                    " JOIN trajectory_steps s ON s.trajectory_id = t.id"
                    " ORDER BY t.id, s.step_index"
                )
            ).all()
    finally:
        store.close()
    expected = []
    for tid, item in zip(ids, plain + mixed, strict=True):
        for index, step in enumerate(item["steps"]):
            context = item.get("context_ids", [])
            expected.append(
                (
                    tid,
                    item["quality"],
                    item.get("latency_us"),
                    item.get("model_route"),
                    context,
                    index,
                    step["reward"],
                    step.get("layer_name"),
                )
            )
    decoded = [(*row[:4], _json(row[4]), *row[5:]) for row in rows]
    assert decoded == expected


def _json(value):
    import json

    return json.loads(value) if isinstance(value, str) else value


def test_recording_succeeds_when_the_flush_after_it_fails(db_url, monkeypatch):
    """The batch committed: a flush that fails after it (the database busy)
    keeps its signals pending instead of failing the call."""
    store = SonaStore(db_url, CONFIG)
    try:

        def unavailable(*args, **kwargs):
            raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

        monkeypatch.setattr(store._instant, "_apply", unavailable)
        ids = store.record_trajectories(make_trajectories(12, 8))
        assert len(ids) == 12  # committed, and the caller is told so
        assert store.pending_signals == 12  # nothing dropped
        monkeypatch.undo()
        assert store.flush() == 12
    finally:
        store.close()


LIFECYCLE = SonaConfig(hidden_dim=4)


def test_closing_a_store_twice_is_harmless(tmp_path):
    """close() is idempotent: its background thread and engine are let go once."""
    store = SonaStore(f"sqlite:///{tmp_path / 'twice.db'}", LIFECYCLE)
    store.close()
    store.close()


def test_a_store_dropped_unclosed_takes_its_checkpoint_thread_along(tmp_path):
    """A store garbage-collected without close() does not leave its WAL
    checkpoint thread behind."""
    import gc
    import threading
    import time

    def count() -> int:
        return sum(t.name == "sona-wal-checkpoint" for t in threading.enumerate())

    before = count()
    [item] = make_trajectories(1, 4)
    for i in range(5):
        store = SonaStore(f"sqlite:///{tmp_path / f's{i}.db'}", LIFECYCLE)
        store.record_trajectories([item])
        del store
    gc.collect()
    deadline = time.monotonic() + 5
    while count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count() == before


def test_signals_of_a_batch_whose_commit_was_not_reported_are_adopted(db_url, monkeypatch):
    """The commit took effect but the call failed after it (say, the
    connection dropped): the batch's signals, dropped from memory, must be
    found in the database by the next flush."""
    import contextlib

    import sona_store.store as store_module

    # On the caller's thread: the writer's retry of such a commit is
    # tests/test_group_commit.py's.
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, micro_flush_threshold=10), background=False)
    try:
        store.record_trajectories(make_trajectories(1, 8, seed=1))  # adopted once
        real = store_module.connection_transaction

        @contextlib.contextmanager
        def commit_then_fail(engine, **kwargs):
            with real(engine, **kwargs) as connection:
                yield connection
            raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))

        monkeypatch.setattr(store_module, "connection_transaction", commit_then_fail)
        with pytest.raises(sa.exc.OperationalError):
            store.record_trajectories(make_trajectories(4, 8, seed=2))
        monkeypatch.undo()
        store.record_trajectories(make_trajectories(5, 8, seed=3))
        with store.engine.connect() as conn:
            applied = conn.execute(sa.text("SELECT count(*) FROM micro_lora_signals")).scalar()
        assert applied == 10  # 1 + 4 (committed, unreported) + 5
        assert store.pending_signals == 0
    finally:
        store.close()
