"""Metrics and health: `StoreCollector` in a registry of one's own, the
`sona-store run --metrics-port` endpoint scraped while cycles run, JSON log
lines, and `/healthz` following a private PostgreSQL that stops and starts."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from sona_store import SonaConfig, SonaStore
from sona_store.db.engine import create_store_engine
from sona_store.scheduler.health import ServiceHealth
from sona_store.scheduler.metrics import DURATION_BUCKETS, StoreCollector
from sona_store.scheduler.service import SonaScheduler

from .helpers import make_trajectories
from .service_helpers import inspector, scalar, wait_for

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3)
PASSWORD = "m3trics-Pa55word"
HOST = "127.0.0.1"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def micro_versions(store: SonaStore) -> int:
    sql = "SELECT count(*) FROM lora_versions WHERE tier = 'micro'"
    return scalar(store.engine, sql)


# -- the collector -----------------------------------------------------------------------


def test_store_collector_follows_the_store(store):
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    assert sample(registry, "sona_store_up") == 1
    assert sample(registry, "sona_cycles_total", status="completed") == 0
    assert sample(registry, "sona_trajectories_pending") == 0
    assert sample(registry, "sona_trajectories_recorded_total") == 0
    assert sample(registry, "sona_last_success_timestamp_seconds") == 0
    assert sample(registry, "sona_micro_lora_versions_total") == micro_versions(store) == 1

    ids = store.record_trajectories(make_trajectories(150, 8))
    assert sample(registry, "sona_trajectories_pending") == 150
    assert sample(registry, "sona_trajectories_recorded_total") == max(ids) == 150
    assert micro_versions(store) > 1  # a flush of 100 signals
    assert sample(registry, "sona_micro_lora_versions_total") == micro_versions(store)

    done = store.run_cycle(force=True)
    assert sample(registry, "sona_cycles_total", status="completed") == 1
    assert sample(registry, "sona_trajectories_pending") == 0
    assert sample(registry, "sona_last_success_timestamp_seconds") == pytest.approx(
        done.finished_at.timestamp(), abs=1e-3
    )
    assert sample(registry, "sona_cycle_duration_seconds_count") == 1
    assert sample(registry, "sona_cycle_duration_seconds_sum") == pytest.approx(done.elapsed)
    for bound in DURATION_BUCKETS:
        expected = 1 if done.elapsed <= bound else 0
        assert sample(registry, "sona_cycle_duration_seconds_bucket", le=repr(bound)) == expected
    assert sample(registry, "sona_cycle_duration_seconds_bucket", le="+Inf") == 1

    assert store.run_cycle().status == "skipped"  # nothing pending
    assert sample(registry, "sona_cycles_total", status="skipped") == 1
    assert sample(registry, "sona_cycle_duration_seconds_count") == 1  # skipped: not timed

    store.rollback(done.cycle_id, reason="test", actor="tester")
    assert sample(registry, "sona_cycles_total", status="completed") == 0
    assert sample(registry, "sona_cycles_total", status="rolled_back") == 1
    assert sample(registry, "sona_cycle_duration_seconds_count") == 1  # it did run


def test_gc_runs_are_counted_from_their_audit_rows(db_url):
    config = SonaConfig(hidden_dim=8, pattern_clusters=3, retention_window=10, min_trajectories=5)
    with SonaStore(db_url, config, actor="tester") as store:
        registry = CollectorRegistry()
        registry.register(StoreCollector(store))
        assert sample(registry, "sona_gc_runs_total") == 0
        for seed in range(4):
            store.record_trajectories(make_trajectories(10, 8, seed=seed))
            store.run_cycle(force=True)
        store.flush()  # unapplied micro-LoRA signals keep their vectors
        done = store.history()[0]
        store.rollback(done.cycle_id, reason="not gc", actor="tester")
        assert sample(registry, "sona_gc_runs_total") == 0  # a rollback's row is not gc's
        assert store.gc(older_than=0, horizon_cycles=1).trajectories > 0
        assert sample(registry, "sona_gc_runs_total") == 1
        assert store.gc(older_than=0, horizon_cycles=1).trajectories == 0  # nothing left
        assert sample(registry, "sona_gc_runs_total") == 1  # an empty gc writes no row


def test_store_collector_reports_a_database_that_does_not_answer(db_url, tmp_path):
    parsed = make_url(db_url)
    if parsed.get_backend_name() == "sqlite":
        dead = f"sqlite:///{tmp_path / 'missing-dir' / 'store.db'}"
    else:
        with socket_port() as port:
            dead = parsed.set(port=port).render_as_string(hide_password=False)
    view = SimpleNamespace(engine=create_store_engine(dead))
    registry = CollectorRegistry()
    registry.register(StoreCollector(view))  # type: ignore[arg-type]
    assert sample(registry, "sona_store_up") == 0
    assert sample(registry, "sona_cycles_total", status="completed") is None
    view.engine.dispose()


class socket_port:
    """A port nothing listens on (bound, never listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind((HOST, 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


def test_health_needs_a_running_scheduler_on_time(store):
    scheduler = SonaScheduler(store, 60)
    health = ServiceHealth(scheduler)
    report = health.check()
    assert not report.ok and report.reason == "the scheduler is not running"
    attempts: list[Any] = []
    scheduler.add_listener(attempts.append)
    scheduler.start()
    try:
        wait_for(lambda: attempts, 60, "the first attempt")
        report = health.check()
        assert report.ok, report
        assert report.last_outcome == attempts[0].status
        health_late = ServiceHealth(scheduler, late_after=0.0)  # any age is late
        health_late.observe(attempts[0])
        wait_for(lambda: not scheduler.attempt_running, 60, "no attempt running")
        late = health_late.check()
        assert not late.ok and late.reason.startswith("no scheduled attempt for")
    finally:
        scheduler.shutdown()
    assert health.check().reason == "the scheduler is not running"


# -- the service ---------------------------------------------------------------------------


def metrics_port(procs: Any, proc: Any) -> int:
    found = wait_for(
        lambda: re.search(r"serving metrics at http://127\.0\.0\.1:(\d+)/metrics", procs.log(proc)),
        60,
        "the metrics endpoint",
    )
    return int(found.group(1))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def completed(values: dict) -> float:
    return values[("sona_cycles_total", (("status", "completed"),))]


@pytest.mark.slow
def test_service_metrics_move_after_a_cycle(db_url, procs):
    with SonaStore(db_url, CONFIG):
        pass
    service = procs.service(
        "service", db_url, "--interval", "1", "--metrics-port", "0", "--log-format", "json"
    )
    port = metrics_port(procs, service)
    before = wait_for(
        lambda: (
            (v := scrape(port))[("sona_service_attempts_total", (("outcome", "ran"),))] >= 1 and v
        ),
        60,
        "a first (skipped) attempt",
    )
    assert completed(before) == 0
    assert before[("sona_trajectories_recorded_total", ())] == 0
    assert healthz(port)[0] == 200

    with SonaStore(db_url) as store:
        store.record_trajectories(make_trajectories(20, 8))
    after = wait_for(lambda: (v := scrape(port)) and completed(v) >= 1 and v, 60, "a cycle")
    assert after[("sona_trajectories_recorded_total", ())] == 20
    assert after[("sona_trajectories_pending", ())] == 0
    assert after[("sona_cycle_duration_seconds_count", ())] == 1
    assert after[("sona_last_success_timestamp_seconds", ())] > 0
    ran = ("sona_service_attempts_total", (("outcome", "ran"),))
    assert after[ran] > before[ran]
    assert after[("sona_cycle_lock_wait_seconds_count", ())] >= after[ran]
    status, body = healthz(port)
    assert status == 200 and body["status"] == "ok", body
    assert procs.terminate(service) == 0, procs.log(service)

    lines = [json.loads(line) for line in procs.log(service).splitlines() if line.strip()]
    cycles = [line for line in lines if line.get("event") == "cycle"]
    with inspector(db_url) as engine, engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT id, status FROM cycles ORDER BY id")).all()
    assert [(c["cycle_id"], c["status"]) for c in cycles] == [tuple(r) for r in stored]
    [done] = [c for c in cycles if c["status"] == "completed"]
    assert done["trajectories"] == 20 and done["elapsed_seconds"] > 0
    assert {"time", "level", "logger", "message", "slot", "lock_wait_seconds"} <= set(done)


def test_metrics_port_with_once_is_refused(tmp_path, capsys):
    from sona_store.cli.main import main

    code = main(["--url", f"sqlite:///{tmp_path / 's.db'}", "run", "--once", "--metrics-port", "0"])
    assert code == 1
    assert "--once" in capsys.readouterr().err


@pytest.mark.slow
def test_healthz_is_503_while_postgresql_is_stopped(private_pg, procs):
    private_pg.create_database("sona")
    url = private_pg.url("sona", PASSWORD)
    SonaStore(url, CONFIG, schema="router_eu").close()
    service = procs.service(
        "service", url, "--schema", "router_eu", "--interval", "1", "--metrics-port", "0"
    )
    port = metrics_port(procs, service)
    wait_for(lambda: healthz(port)[0] == 200, 60, "healthy at start")

    private_pg.stop()
    status, body = wait_for(lambda: (r := healthz(port))[0] == 503 and r, 60, "503 when stopped")
    assert body["status"] == "unhealthy"
    assert "store 'router_eu'" in body["reason"] and "does not answer" in body["reason"]
    assert PASSWORD not in json.dumps(body)
    assert scrape(port)[("sona_store_up", ())] == 0  # /metrics is still served
    print(f"\n/healthz while stopped: {body}")

    private_pg.start()
    status, body = wait_for(lambda: (r := healthz(port))[0] == 200 and r, 120, "200 when back")
    assert body["status"] == "ok"
    assert scrape(port)[("sona_store_up", ())] == 1
    assert procs.terminate(service) == 0, procs.log(service)
    assert PASSWORD not in procs.log(service)
