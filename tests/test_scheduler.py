"""The scheduled service: slots derived from the database, restarts, failures
recorded once the database is back, password masking, SIGTERM, `--once`."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.engine import make_url

from sona_store import SonaConfig, SonaStore
from sona_store.db.engine import create_store_engine
from sona_store.db.types import utcnow
from sona_store.scheduler.service import SonaScheduler, scrub_password
from sona_store.services.cycle import SlotTakenError, run_cycle
from sona_store.services.scheduling import interval_delta, normalise_slot, run_scheduled_cycle

from .helpers import make_trajectories
from .service_helpers import (
    cycles,
    inspector,
    snapshot,
    wait_for,
)

SMALL = SonaConfig(hidden_dim=8, pattern_clusters=4)
PASSWORD = "s3cret-Pa55word"


def _scheduled(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["scheduled_for"] is not None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unreachable(url: str, tmp_path: Path) -> str:
    """The same kind of URL, pointing at nothing (a closed port, a missing dir)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path / 'missing-dir' / 'store.db'}"
    return parsed.set(port=_free_port()).render_as_string(hide_password=False)


def _with_password(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


# -- slots ------------------------------------------------------------------------------


def test_interval_is_whole_milliseconds():
    assert interval_delta(1.5) == dt.timedelta(milliseconds=1500)
    assert interval_delta(0.0004 + 0.001) == dt.timedelta(milliseconds=1)
    with pytest.raises(ValueError):
        interval_delta(0.0001)


def test_first_slot_runs_now_and_the_next_is_one_interval_later(store):
    store.record_trajectories(make_trajectories(12, 8))
    interval = dt.timedelta(seconds=60)
    before = utcnow()
    first = run_scheduled_cycle(store.engine, store.config, interval)
    assert first.ran and first.result.status == "completed"
    assert first.result.trigger == "scheduled"
    assert first.result.scheduled_for == first.slot == normalise_slot(first.slot)
    assert normalise_slot(before) <= first.slot <= utcnow()
    again = run_scheduled_cycle(store.engine, store.config, interval)
    assert not again.ran
    assert again.slot == first.slot + interval == again.next_due
    assert len(store.history()) == 1  # "not due" writes nothing


def test_missed_slots_are_coalesced_into_one_cycle_on_the_grid(store):
    interval = dt.timedelta(seconds=10)
    anchor = normalise_slot(utcnow() - 3.5 * interval)
    run_cycle(store.engine, store.config, trigger="scheduled", scheduled_for=anchor)
    caught_up = run_scheduled_cycle(store.engine, store.config, interval)
    assert caught_up.ran
    assert caught_up.slot == anchor + 3 * interval
    assert not run_scheduled_cycle(store.engine, store.config, interval).ran
    # Both found nothing to learn: one skipped record for the two, on the last slot.
    slots = [(r.scheduled_for, r.attempts) for r in store.history()]
    assert slots == [(anchor + 3 * interval, 2)]


def test_early_takes_the_coming_slot_only_within_the_tolerance(store):
    interval = dt.timedelta(seconds=10)
    anchor = normalise_slot(utcnow() - dt.timedelta(seconds=6))  # next due in ~4 s
    run_cycle(store.engine, store.config, trigger="scheduled", scheduled_for=anchor)
    late = run_scheduled_cycle(store.engine, store.config, interval, early=dt.timedelta(seconds=1))
    assert not late.ran
    early = run_scheduled_cycle(store.engine, store.config, interval, early=dt.timedelta(seconds=5))
    assert early.ran and early.slot == anchor + interval


def test_a_slot_key_is_unique(store):
    slot = normalise_slot(utcnow())
    run_cycle(store.engine, store.config, trigger="scheduled", scheduled_for=slot)
    with pytest.raises(SlotTakenError):
        run_cycle(store.engine, store.config, trigger="scheduled", scheduled_for=slot)


@pytest.mark.slow
def test_two_replicas_firing_together_make_one_cycle_per_slot(db_url):
    replicas = [SonaStore(db_url, SMALL) for _ in range(2)]
    try:
        replicas[0].record_trajectories(make_trajectories(12, 8))
        # Long enough that the loser, once it has the lock, never finds the next
        # slot already due, however slow the winner's cycle is on a busy machine.
        interval = dt.timedelta(seconds=3)
        won: list[dt.datetime] = []
        for round_ in range(3):
            barrier = threading.Barrier(2, timeout=30)
            outcomes: list = [None, None]

            def fire(i: int, barrier: threading.Barrier, outcomes: list) -> None:
                barrier.wait()
                outcomes[i] = run_scheduled_cycle(
                    replicas[i].engine, replicas[i].config, interval, lock_timeout=30
                )

            threads = [threading.Thread(target=fire, args=(i, barrier, outcomes)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads)
            assert sorted(o.ran for o in outcomes) == [False, True], round_
            winner = next(o for o in outcomes if o.ran)
            loser = next(o for o in outcomes if not o.ran)
            assert loser.slot == winner.slot + interval
            won.append(winner.slot)
            time.sleep(max(0.0, (winner.next_due - utcnow()).total_seconds()) + 0.01)
        assert len(set(won)) == 3
        # The first round learned; the two idle ones share one skipped record.
        history = replicas[0].history()
        assert [(r.status, r.attempts) for r in history] == [("skipped", 2), ("completed", 1)]
        assert [r.scheduled_for for r in history] == [won[2], won[0]]
    finally:
        for replica in replicas:
            replica.close()


# -- failures while the database is unreachable -------------------------------------------


def test_scrub_password_masks_every_spelling():
    text = "x s3cr@t y s3cr%40t z s3cr%40t"
    assert scrub_password(text, "s3cr@t") == "x *** y *** z ***"
    assert scrub_password("nothing", None) == "nothing"


def test_failed_attempts_are_recorded_once_the_database_answers(db_url, tmp_path, caplog):
    """The database is unreachable for two ticks: the service keeps going, logs
    it with the password masked, and records both attempts when it is back."""
    url = _with_password(db_url)
    live = SonaStore(url, SMALL)
    dead_engine = create_store_engine(_unreachable(url, tmp_path))
    # The scheduler only uses a store's engine, config and actor.
    view = SimpleNamespace(engine=dead_engine, config=live.config, actor="tester")
    try:
        live.record_trajectories(make_trajectories(12, 8))
        scheduler = SonaScheduler(view, 60)
        caplog.set_level(logging.INFO, logger="sona_store")
        assert scheduler.run_once().status == "unavailable"
        assert scheduler.run_once().status == "unavailable"
        assert scheduler.unrecorded_failures == 2
        assert live.history() == []

        view.engine = live.engine  # the database is back
        report = scheduler.run_once()
        assert report.status == "ran"
        assert scheduler.unrecorded_failures == 0
        history = list(reversed(live.history()))
        assert [r.status for r in history] == ["failed", "failed", "completed"]
        assert all(r.trigger == "scheduled" for r in history)
        assert "unavailable" in history[0].error
        assert history[0].scheduled_for is None  # it never got to claim a slot
        assert history[2].trajectories_processed == 12
        if make_url(url).password:
            assert PASSWORD not in caplog.text
            assert all(PASSWORD not in (r.error or "") for r in history)
            assert "***" in caplog.text
    finally:
        dead_engine.dispose()
        live.close()


@pytest.mark.slow
def test_cli_never_prints_the_password_of_an_unreachable_database(db_url, tmp_path, procs):
    if make_url(db_url).get_backend_name() == "sqlite":
        pytest.skip("SQLite URLs carry no password")
    url = _unreachable(_with_password(db_url), tmp_path)
    proc = procs.service("once", url, "--once")
    assert procs.wait(proc, 60) == 1
    output = procs.log(proc)
    assert "error" in output
    assert PASSWORD not in output


# -- the service process --------------------------------------------------------------------


@pytest.mark.slow
def test_run_once_runs_the_due_slot_then_nothing(db_url, procs):
    with SonaStore(db_url, SMALL) as store:
        store.record_trajectories(make_trajectories(12, 8))
    first = procs.service("once-1", db_url, "--once", "--interval", "3600")
    assert procs.wait(first, 60) == 0, procs.log(first)
    second = procs.service("once-2", db_url, "--once", "--interval", "3600")
    assert procs.wait(second, 60) == 0, procs.log(second)
    log = procs.log(second)
    assert "not due: the last scheduled cycle was for slot" in log
    assert "another process" not in log
    with inspector(db_url) as engine:
        rows = cycles(engine)
    assert [(r["status"], r["trigger"]) for r in rows] == [("completed", "scheduled")]
    assert "completed for slot" in procs.log(first)


@pytest.mark.slow
def test_restart_neither_runs_an_extra_cycle_nor_skips_one(db_url, procs):
    """Stopped right after a cycle and restarted at once, the service runs its
    next cycle for exactly the next slot of the database's schedule."""
    with SonaStore(db_url, SMALL) as store:
        store.record_trajectories(make_trajectories(12, 8))
    interval = 4.0
    with inspector(db_url) as engine:
        first = procs.service("first", db_url, "--interval", str(interval))
        wait_for(lambda: _scheduled(cycles(engine)), 60, "the first scheduled cycle")
        assert procs.terminate(first, sig=signal.SIGINT) == 0, procs.log(first)
        assert "SIGINT received" in procs.log(first)
        [anchor] = _scheduled(cycles(engine))

        second = procs.service("second", db_url, "--interval", str(interval))
        rows = wait_for(
            lambda: len(_scheduled(cycles(engine))) >= 2 and _scheduled(cycles(engine)),
            60,
            "the restarted service's first cycle",
        )
        assert procs.terminate(second) == 0, procs.log(second)
        rows = _scheduled(cycles(engine))
    step = dt.timedelta(seconds=interval)
    assert rows[1]["scheduled_for"] == anchor["scheduled_for"] + step
    assert rows[1]["started_at"] >= anchor["scheduled_for"] + step
    assert "scheduling learning cycles" in procs.log(second)


@pytest.mark.slow
# The service's cycle pauses inside its transaction until the test releases it
# (service_helpers.PAUSED_SERVICE), so SIGTERM always lands in a running cycle:
# "finish" releases it after the signal, within a grace no wait of ours
# exhausts; "abandon" never does, so the 0.2 s grace must run out.
@pytest.mark.parametrize("grace", [600.0, 0.2], ids=["finish", "abandon"])
def test_sigterm_during_a_cycle_leaves_it_completed_or_absent(db_url, procs, tmp_path, grace):
    recorded = 40
    with SonaStore(db_url, SMALL) as store:
        store.record_trajectories(make_trajectories(recorded, 8))
    marker, release = tmp_path / "in-cycle", tmp_path / "release"
    with inspector(db_url) as engine:
        before = snapshot(engine)
        proc = procs.paused_service(
            "svc", db_url, marker, release, "--interval", "3600", "--grace", str(grace)
        )
        wait_for(marker.exists, 120, "the service's cycle to start")
        proc.send_signal(signal.SIGTERM)
        if grace >= 30:
            wait_for(lambda: "SIGTERM received" in procs.log(proc), 60, "the signal handled")
            assert proc.poll() is None  # waiting for the paused cycle, as granted
            release.write_text("go")
        rc = procs.wait(proc, 120)
        rows = cycles(engine)
        after = snapshot(engine)
    log = procs.log(proc)
    assert "SIGTERM received" in log
    if grace >= 30:  # it finished: whole
        assert rc == 0, log
        [row] = rows
        assert row["status"] == "completed"
        assert row["trajectories_processed"] == recorded
        assert after["pending"] == 0
        assert after["head"][0]["cycle_id"] == row["id"]
    else:  # still paused when the grace ran out: abandoned, nothing of it kept
        assert rc == 1, log
        assert "abandoning it" in log
        assert not release.exists()
        assert rows == []
        assert after == before


def _attempts(store: SonaStore) -> int:
    """Scheduled attempts so far: idle ones share a record."""
    return sum(r.attempts for r in store.history())


def test_embedded_scheduler_runs_on_the_grid_and_shuts_down(db_url):
    with SonaStore(db_url, SMALL) as store:
        store.record_trajectories(make_trajectories(12, 8))
        scheduler = SonaScheduler(store, 0.3)
        scheduler.start()
        try:
            assert scheduler.running
            wait_for(lambda: _attempts(store) >= 3, 30, "three scheduled attempts")
        finally:
            scheduler.shutdown()
        assert not scheduler.running
        history = list(reversed(store.history()))
        count = _attempts(store)
        time.sleep(0.7)
        assert _attempts(store) == count  # nothing runs after shutdown
    step = dt.timedelta(milliseconds=300)
    slots = [r.scheduled_for for r in history]
    assert all(
        (b - a) % step == dt.timedelta(0) and b > a for a, b in zip(slots, slots[1:], strict=False)
    )
    assert history[0].status == "completed" and history[0].trajectories_processed == 12
