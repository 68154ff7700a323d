"""Prometheus metrics of a store and of its scheduled service (the optional
`prometheus_client` package: `pip install 'sona-store[metrics]'`).

`StoreCollector(store)` reads the store's figures from the database at each
scrape, so they count every process's work and survive restarts; every
replica of `sona-store run` reports the same values (aggregate them with
`max`, not `sum`). Register it in any registry:

    from prometheus_client import REGISTRY
    from sona_store.scheduler.metrics import StoreCollector
    REGISTRY.register(StoreCollector(store))

`ServiceMetrics` counts what one `SonaScheduler` process did: its attempts by
outcome and how long each waited for the cycle lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sona_store.db.engine import transaction
from sona_store.db.figures import StoreFigures, store_figures
from sona_store.errors import MissingExtraError

if TYPE_CHECKING:
    from sona_store.scheduler.service import SonaScheduler, TickReport
    from sona_store.store import SonaStore

logger = logging.getLogger("sona_store.metrics")

# Seconds, from well under a second (a default-size window) to minutes (a
# large window on a busy machine); benchmarks/README.md has measured cycle times.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LOCK_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
UP_HELP = "1 when this scrape read the store's database, else 0"
OUTCOMES = ("ran", "not_due", "busy", "failed", "unavailable", "stopping")


def prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # an optional extra
        raise MissingExtraError(
            "metrics need the prometheus_client package: pip install 'sona-store[metrics]'"
        ) from exc
    return prometheus_client


class StoreCollector:
    """The store's figures as Prometheus metrics, read at each scrape. When the
    database does not answer, only `sona_store_up 0` is reported."""

    def __init__(self, store: SonaStore, *, buckets: tuple[float, ...] = DURATION_BUCKETS):
        prometheus()
        self.store = store
        self.buckets = tuple(sorted(buckets))

    def describe(self) -> Iterator[Any]:
        empty = StoreFigures({}, 0, 0.0, [(b, 0) for b in self.buckets], 0, 0, 0, None, 0)
        return self._families(empty)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            with transaction(self.store.engine) as session:
                figures = store_figures(session, self.buckets)
        except Exception as exc:
            logger.warning("metrics: the store could not be read: %s", exc)
            yield GaugeMetricFamily("sona_store_up", UP_HELP, value=0)
            return
        yield from self._families(figures)

    def _families(self, f: StoreFigures) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        yield GaugeMetricFamily("sona_store_up", UP_HELP, value=1)
        cycles = CounterMetricFamily(
            "sona_cycles", "learning cycles recorded, by their status now", labels=["status"]
        )
        for status, count in f.cycles_by_status.items():
            cycles.add_metric([status], count)
        yield cycles
        yield HistogramMetricFamily(
            "sona_cycle_duration_seconds",
            "duration of the cycles that ran (completed, or rolled back since)",
            buckets=[(_bound(b), n) for b, n in f.duration_buckets] + [("+Inf", f.duration_count)],
            sum_value=f.duration_sum,
        )
        yield GaugeMetricFamily(
            "sona_trajectories_pending",
            "trajectories recorded and waiting for a cycle",
            value=f.trajectories_pending,
        )
        yield CounterMetricFamily(
            "sona_trajectories_recorded",
            "trajectories recorded (the highest trajectory id)",
            value=f.trajectories_recorded,
        )
        yield CounterMetricFamily(
            "sona_micro_lora_versions",
            "micro-LoRA versions written by the instant loop",
            value=f.micro_lora_versions,
        )
        yield GaugeMetricFamily(
            "sona_last_success_timestamp_seconds",
            "end of the latest cycle that ran (Unix time; 0: none yet)",
            value=f.last_success.timestamp() if f.last_success is not None else 0.0,
        )
        yield CounterMetricFamily(
            "sona_gc_runs",
            "gc (retention) runs that deleted vectors (each writes one audit row)",
            value=f.gc_runs,
        )


def _bound(value: float) -> str:
    return repr(float(value))


class ServiceMetrics:
    """Per-process metrics of a scheduler, fed by its attempts."""

    def __init__(self, registry: Any):
        pc = prometheus()
        self.attempts = pc.Counter(
            "sona_service_attempts",
            "scheduled attempts of this process, by outcome",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.attempts.labels(outcome)
        self.lock_wait = pc.Histogram(
            "sona_cycle_lock_wait_seconds",
            "time a scheduled attempt of this process waited for the store's cycle lock "
            "(attempts that gave up count as outcome busy)",
            buckets=LOCK_WAIT_BUCKETS,
            registry=registry,
        )
        self.last_attempt = pc.Gauge(
            "sona_service_last_attempt_timestamp_seconds",
            "when this process's latest scheduled attempt ended (Unix time)",
            registry=registry,
        )

    def observe(self, report: TickReport) -> None:
        self.attempts.labels(report.status).inc()
        if report.run is not None:
            self.lock_wait.observe(report.run.lock_wait)
        self.last_attempt.set(time.time())

    def attach(self, scheduler: SonaScheduler) -> ServiceMetrics:
        scheduler.add_listener(self.observe)
        return self
