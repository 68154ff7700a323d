"""Writers in several processes on one store. On PostgreSQL a recording
transaction never waits for another one, not even for one whose micro-LoRA
flush holds the head row: its trajectories commit and its due signals stay
queued (`db.locks.try_micro_flush_lock`). On SQLite writers take turns on the
database's write lock. Either way every signal is applied exactly once.

Real processes, synchronised by pipes: a writer pauses inside its open
recording transaction (after its flush wrote the new head, or after its
inserts) until the test tells it to go on."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore

from .helpers import make_trajectories

pytestmark = pytest.mark.slow  # writer processes

CONFIG = SonaConfig(hidden_dim=8, micro_flush_threshold=10)
BATCH = 10  # one whole flush group: every batch's flush is due
WAIT = 120.0  # seconds a step may take before the test fails (a hang guard, not a timing)


def _writer(url: str, pipe: Any) -> None:
    """A writer process: runs the commands the test sends through `pipe`."""
    from sona_store.db import state, trajectories

    pause: dict[str, bool] = {"after_flush": False, "after_insert": False}

    def paused(where: str) -> None:
        if pause[where]:
            pause[where] = False
            pipe.send(("paused", where))
            assert pipe.recv() == "go"

    point, insert = state.point_micro_lora, trajectories.insert_batch

    def point_then_pause(*args: Any) -> None:
        point(*args)
        paused("after_flush")  # the head row is locked and rewritten, not committed

    def insert_then_pause(*args: Any) -> list[int]:
        ids = insert(*args)
        paused("after_insert")
        return ids

    state.point_micro_lora = point_then_pause
    trajectories.insert_batch = insert_then_pause
    store = SonaStore(url, CONFIG)
    try:
        while True:
            command, *args = pipe.recv()
            if command == "record":
                seed, where = args
                if where:
                    pause[where] = True
                pipe.send(
                    ("recorded", store.record_trajectories(make_trajectories(BATCH, 8, seed=seed)))
                )
            elif command == "flush":
                store.flush()
                pipe.send(("flushed", store.pending_signals))
            else:
                break
    finally:
        store.close()
        pipe.send(("closed",))


class Writer:
    def __init__(self, url: str):
        context = multiprocessing.get_context("spawn")
        self.pipe, theirs = context.Pipe()
        self.process = context.Process(target=_writer, args=(url, theirs), daemon=True)
        self.process.start()

    def send(self, *command: Any) -> None:
        self.pipe.send(command)

    def expect(self, kind: str, why: str) -> Any:
        if not self.pipe.poll(WAIT):
            pytest.fail(why)
        message = self.pipe.recv()
        assert message[0] == kind, message
        return message[1] if len(message) > 1 else None

    def stop(self) -> None:
        if self.process.is_alive():
            self.pipe.send(("close",))
            self.process.join(WAIT)
        if self.process.is_alive():
            self.process.kill()


def _committed(url: str, ids: list[int]) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM trajectories WHERE id BETWEEN :a AND :b"),
                {"a": min(ids), "b": max(ids)},
            ).scalar_one()
    finally:
        engine.dispose()


def test_writers_in_two_processes_record_while_the_other_holds_its_transaction(db_url):
    SonaStore(db_url, CONFIG).close()  # the schema, before two processes open it
    concurrent = db_url.startswith("postgresql")
    a, b = Writer(db_url), Writer(db_url)
    try:
        recorded: list[int] = []
        # A's recording transaction runs its flush (head row locked and
        # rewritten) and stays open.
        a.send("record", 1, "after_flush")
        assert a.expect("paused", "A never reached its flush") == "after_flush"
        if concurrent:
            # B records three batches whose flushes are due, meanwhile.
            for seed in (2, 3, 4):
                b.send("record", seed, None)
                ids = b.expect("recorded", "B waited for A's open recording transaction")
                assert _committed(db_url, ids) == BATCH  # committed, A still open
                recorded += ids
            # Now B holds an open recording transaction, and A finishes.
            b.send("record", 5, "after_insert")
            assert b.expect("paused", "B never reached its insert") == "after_insert"
            a.pipe.send("go")
            recorded += a.expect("recorded", "A waited for B's open recording transaction")
            b.pipe.send("go")
            recorded += b.expect("recorded", "B never finished")
        else:
            # SQLite: one writer at a time; B's batch waits for A's commit.
            b.send("record", 2, None)
            a.pipe.send("go")
            recorded += a.expect("recorded", "A never finished")
            recorded += b.expect("recorded", "B never finished after A committed")
        for writer in (a, b):
            writer.send("flush")
            assert writer.expect("flushed", "a flush never finished") == 0
    finally:
        a.stop()
        b.stop()
    assert len(set(recorded)) == len(recorded)
    store = SonaStore(db_url)
    try:
        with store.engine.connect() as conn:
            ledger = conn.execute(
                sa.text("SELECT trajectory_id FROM micro_lora_signals ORDER BY trajectory_id")
            ).scalars()
            assert list(ledger) == sorted(recorded)  # every signal, exactly once
            stored = conn.execute(sa.text("SELECT count(*) FROM trajectories")).scalar_one()
        assert stored == len(recorded)
    finally:
        store.close()
