"""Many processes, one store: `sona-store run` replicas, writers and manual
cycles together; a replica killed mid-cycle; PostgreSQL stopped and started
under a running service. All real processes and real databases."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

import pytest

from sona_store import SonaConfig, SonaStore
from sona_store.db.types import utcnow

from .helpers import make_trajectories
from .service_helpers import (
    cycle_lock_held,
    cycles,
    inspector,
    pending,
    rows,
    snapshot,
    wait_for,
)

pytestmark = pytest.mark.slow

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=4, retention_window=2000)
PASSWORD = "0utage-Pa55word"

WRITER = """
import sys, time
from sona_store import SonaStore
from tests.helpers import make_trajectories

url, seed, total, batch, pause, out = sys.argv[1:]
total, batch, pause = int(total), int(batch), float(pause)
store = SonaStore(url)
items = make_trajectories(total, store.config.hidden_dim, seed=int(seed))
with open(out, "w") as ids_file:
    for start in range(0, total, batch):
        ids = store.record_trajectories(items[start : start + batch])
        ids_file.write(" ".join(map(str, ids)) + "\\n")
        ids_file.flush()
        time.sleep(pause)
"""

MANUAL = """
import sys, time
from sona_store import SonaStore

url, count, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = SonaStore(url)
for i in range(count):
    time.sleep(pause)
    result = store.run_cycle(force=i % 2 == 0)
    print(result.cycle_id, result.status, result.trajectories_processed, flush=True)
"""


def _read_ids(path: Path) -> list[int]:
    return [int(token) for token in path.read_text().split()]


def _check_consumption(engine, recorded: list[int]) -> dict:
    """Every recorded trajectory exists once and is pending or consumed by a
    completed cycle, and each cycle's count is what it actually consumed."""
    assert len(recorded) == len(set(recorded))
    stored = rows(engine, "SELECT id, consumed_by_cycle_id FROM trajectories")
    assert sorted(r["id"] for r in stored) == sorted(recorded)  # nothing lost, nothing extra
    records = {r["id"]: r for r in cycles(engine)}
    consumed = Counter(r["consumed_by_cycle_id"] for r in stored if r["consumed_by_cycle_id"])
    for cycle_id, count in consumed.items():
        assert records[cycle_id]["status"] == "completed", records[cycle_id]
        assert records[cycle_id]["trajectories_processed"] == count
    for record in records.values():  # skipped and failed cycles consumed nothing
        assert record["trajectories_processed"] == consumed.get(record["id"], 0), record
    return {"consumed": sum(consumed.values()), "pending": len(stored) - sum(consumed.values())}


def _check_no_overlap_and_one_cycle_per_slot(records: list[dict], interval: float) -> None:
    # Failed records are written after their rollback, so their finished_at is
    # the recording time, not the end of the locked work: only real cycles here.
    ran = sorted(
        (r for r in records if r["status"] in ("completed", "skipped")),
        key=lambda r: r["started_at"],
    )
    for before, after in zip(ran, ran[1:], strict=False):
        assert before["finished_at"] <= after["started_at"], (before, after)
    slots = [r["scheduled_for"] for r in records if r["scheduled_for"] is not None]
    assert len(slots) == len(set(slots))
    step = dt.timedelta(seconds=interval)
    slots.sort()
    for a, b in zip(slots, slots[1:], strict=False):
        assert b > a and (b - a) % step == dt.timedelta(0), (a, b)  # one grid, every replica


def test_two_services_four_writers_and_manual_cycles_share_one_store(db_url, procs, tmp_path):
    interval = 1.0
    writers, per_writer, batch, pause = 4, 3000, 20, 0.12
    SonaStore(db_url, CONFIG).close()
    services = [
        procs.service(f"service-{i}", db_url, "--interval", str(interval)) for i in range(2)
    ]
    outputs = [tmp_path / f"writer-{i}.ids" for i in range(writers)]
    writer_procs = [
        procs.script(
            f"writer-{i}", WRITER, db_url, str(i), str(per_writer), str(batch), str(pause), str(out)
        )
        for i, out in enumerate(outputs)
    ]
    manual = procs.script("manual", MANUAL, db_url, "6", "3.5")
    for proc in [*writer_procs, manual]:
        assert procs.wait(proc, 120) == 0, procs.log(proc)
    recorded = [i for out in outputs for i in _read_ids(out)]
    assert len(recorded) == writers * per_writer
    with inspector(db_url) as engine:
        # The last writes are consumed by a later scheduled cycle (unless fewer
        # than the minimum remain: then they wait, pending).
        wait_for(lambda: pending(engine) < CONFIG.min_trajectories, 30, "the last batch")
        for service in services:
            assert procs.terminate(service) == 0, procs.log(service)
        figures = _check_consumption(engine, recorded)
        records = cycles(engine)
    _check_no_overlap_and_one_cycle_per_slot(records, interval)
    statuses = Counter(r["status"] for r in records)
    assert statuses["failed"] == 0, [r["error"] for r in records if r["status"] == "failed"]
    by_trigger = Counter(r["trigger"] for r in records)
    assert by_trigger["manual"] + by_trigger["forced"] == 6
    completed_scheduled = [
        r for r in records if r["trigger"] == "scheduled" and r["status"] == "completed"
    ]
    assert len(completed_scheduled) >= 3
    logs = procs.all_logs()
    assert "Traceback" not in logs
    assert "completed for slot" in logs
    actors = Counter(r["actor"].rsplit(":", 1)[-1] for r in completed_scheduled)
    print(
        f"\n{db_url.split(':')[0]}: {len(recorded)} trajectories, {len(records)} cycles "
        f"{dict(statuses)}, {dict(by_trigger)}, scheduled cycles by service pid {dict(actors)}, "
        f"{figures}"
    )


def test_sigkill_mid_cycle_leaves_the_store_as_before_and_a_replica_finishes(
    db_url, procs, tmp_path
):
    total = 200
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(make_trajectories(total, 8))
    marker = tmp_path / "in-cycle"
    with inspector(db_url) as engine:
        before = snapshot(engine)
        # Its cycle stops inside the transaction and is never released: the
        # kill lands in the middle of it whatever the machine's speed.
        victim = procs.paused_service(
            "victim", db_url, marker, tmp_path / "never", "--interval", "3600"
        )
        wait_for(marker.exists, 120, "the first service's cycle to start")
        survivor = procs.service("survivor", db_url, "--interval", "3600")
        # Let the other replica come up and wait for the lock (on SQLite it waits
        # while opening the store); the kill does not depend on it.
        deadline = time.monotonic() + 2.0
        while "scheduling" not in procs.log(survivor) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.poll() is None and cycle_lock_held(db_url)
        victim.kill()
        assert procs.wait(victim, 30) == -9
        assert snapshot(engine) == before, "a killed cycle must leave nothing behind"

        def finished() -> list[dict]:
            return [r for r in cycles(engine) if r["status"] == "completed"]

        [record] = wait_for(finished, 120, "the other replica to run the cycle", 0.2)
        assert procs.terminate(survivor) == 0, procs.log(survivor)
        after = snapshot(engine)
        records = cycles(engine)
    assert [r["id"] for r in records] == [record["id"]]  # no failed or partial records
    assert record["trajectories_processed"] == total
    assert record["actor"].endswith(f":{survivor.pid}")
    assert after["pending"] == 0
    assert after["lora_versions"] == before["lora_versions"] + 1
    assert after["ewc_states"] == before["ewc_states"] + 1
    assert after["head"][0]["cycle_id"] == record["id"]


def test_postgresql_outage_is_survived_and_recorded(private_pg, procs):
    """The server stops for a few seconds under two running services: their
    failed attempts are recorded once it is back, they recover without a
    restart, nothing is lost, and no log shows the password."""
    private_pg.create_database("sona")
    url = private_pg.url("sona", PASSWORD)
    with SonaStore(url, CONFIG) as store:
        store.record_trajectories(make_trajectories(40, 8, seed=1))
    services = [procs.service(f"service-{i}", url, "--interval", "1") for i in range(2)]
    for service in services:  # a service exits if the database is down when it starts
        wait_for(lambda s=service: "scheduling" in procs.log(s), 60, "the services to start")
    with inspector(url) as engine:
        wait_for(lambda: pending(engine) == 0, 60, "the first batch to be consumed")
    stopped_at = utcnow()
    private_pg.stop()
    time.sleep(4)
    private_pg.start()
    back_at = utcnow()
    assert all(s.poll() is None for s in services), procs.all_logs()
    with SonaStore(url) as store:
        store.record_trajectories(make_trajectories(40, 8, seed=2))
    with inspector(url) as engine:

        def recovered() -> bool:
            records = cycles(engine)
            failed = [r for r in records if r["status"] == "failed"]
            later = [r for r in records if r["status"] == "completed" and r["started_at"] > back_at]
            return bool(failed and later and pending(engine) == 0)

        wait_for(recovered, 60, "failures recorded and cycles completing again", 0.2)
        for service in services:
            assert procs.terminate(service) == 0, procs.log(service)
        records = cycles(engine)
        stored = rows(engine, "SELECT consumed_by_cycle_id FROM trajectories")
    failed = [r for r in records if r["status"] == "failed"]
    # Attempts made before the server was back (one may have been in flight
    # when it stopped), recorded after every cycle that had finished before.
    finished_before = [
        r for r in records if r["status"] != "failed" and r["finished_at"] < stopped_at
    ]
    assert all(f["id"] > max(r["id"] for r in finished_before) for f in failed)
    assert all(f["started_at"] < back_at for f in failed)
    database_trouble = ("unavailable", "connection", "terminating", "server closed")
    assert all(any(word in r["error"] for word in database_trouble) for r in failed), failed
    assert all(PASSWORD not in r["error"] for r in failed)
    status = {r["id"]: r["status"] for r in records}
    assert len(stored) == 80
    assert all(status[r["consumed_by_cycle_id"]] == "completed" for r in stored)
    logs = procs.all_logs()
    assert PASSWORD not in logs
    assert "postgres:***@127.0.0.1" in logs  # the URL is shown, masked
    print(f"\noutage: {len(failed)} failed attempts recorded, {len(records)} cycles in all")
