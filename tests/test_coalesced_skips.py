"""Idle scheduled ticks share one skipped cycle record (`attempts`, first and
last time), so history does not fill with 1,440 rows a day; forced and manual
attempts, failures and anything that moves the head still get rows of their own."""

from __future__ import annotations

import datetime as dt

from sona_store import SonaConfig, SonaStore
from sona_store.services.scheduling import run_scheduled_cycle

from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3, min_trajectories=10)
# Every tick due: a 1 ms grid, and a tick may run a slot up to an hour early.
INTERVAL = dt.timedelta(milliseconds=1)
EARLY = dt.timedelta(hours=1)


def tick(store: SonaStore):
    return run_scheduled_cycle(store.engine, store.config, INTERVAL, early=EARLY)


def test_idle_ticks_share_one_record_with_count_and_times(db_url):
    with SonaStore(db_url, CONFIG) as store:
        runs = [tick(store) for _ in range(5)]
        assert all(r.ran and r.result.status == "skipped" for r in runs)
        assert {r.result.cycle_id for r in runs} == {runs[0].result.cycle_id}
        assert [r.result.attempts for r in runs] == [1, 2, 3, 4, 5]
        (record,) = store.history()
        assert record.attempts == 5 and record.status_text == "skipped x5"
        assert record.started_at == runs[0].result.started_at
        assert record.last_attempt_at == runs[-1].result.last_attempt_at
        assert record.last_attempt_at > record.started_at
        assert record.scheduled_for == runs[-1].slot  # the schedule's anchor moves on
        assert record.trigger == "scheduled" and record.reason == "no trajectories to process"

        # Trajectories under the minimum: still idle, the reason says why now.
        store.record_trajectories(make_trajectories(3, DIM))
        assert tick(store).result.attempts == 6
        (record,) = store.history()
        assert record.reason.startswith("insufficient trajectories (3 < 10")


def test_forced_and_manual_attempts_keep_their_own_rows(db_url):
    with SonaStore(db_url, CONFIG) as store:
        tick(store)
        tick(store)
        forced = store.run_cycle(force=True)  # nothing pending: skipped
        manual = store.run_cycle()
        after = tick(store)
        again = tick(store)
        history = store.history()
    assert [(r.trigger, r.status, r.attempts) for r in reversed(history)] == [
        ("scheduled", "skipped", 2),
        ("forced", "skipped", 1),
        ("manual", "skipped", 1),
        ("scheduled", "skipped", 2),
    ]
    assert after.result.cycle_id == again.result.cycle_id
    assert after.result.cycle_id not in (forced.cycle_id, manual.cycle_id)


def test_a_completed_cycle_or_a_rollback_starts_a_new_record(db_url):
    with SonaStore(db_url, CONFIG) as store:
        first = tick(store).result
        store.record_trajectories(make_trajectories(12, DIM))
        completed = tick(store).result
        assert completed.status == "completed"
        idle = tick(store).result
        assert idle.cycle_id not in (first.cycle_id, completed.cycle_id)
        assert tick(store).result.cycle_id == idle.cycle_id
        store.rollback(completed.cycle_id, reason="test")  # the head moves back
        after_rollback = tick(store).result
        assert after_rollback.cycle_id != idle.cycle_id and after_rollback.attempts == 1
        assert store.history(status="skipped")[0].cycle_id == after_rollback.cycle_id


def test_history_since_counts_a_record_by_its_last_tick(db_url):
    with SonaStore(db_url, CONFIG) as store:
        runs = [tick(store) for _ in range(3)]
        last = runs[-1].result.last_attempt_at
        assert [r.cycle_id for r in store.history(since=last)] == [runs[0].result.cycle_id]
        assert store.history(since=last + dt.timedelta(microseconds=1000)) == []
        assert store.history(status=["completed", "failed"]) == []
