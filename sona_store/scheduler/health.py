"""The service's HTTP endpoint (`sona-store run --metrics-port N`): Prometheus
metrics at `/metrics` and a health check at `/healthz`.

`/healthz` answers 200 while the scheduler is running, its attempts come on
time (the latest ended less than two intervals plus the lock timeout plus
10 s ago, or one is running now) and the database answers `SELECT 1`; 503
otherwise. The body is JSON: `status`, `reason`, and the latest attempt's
outcome and age. Before the first attempt the service counts as on time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sona_store.db.engine import store_label, translate_errors
from sona_store.scheduler.metrics import ServiceMetrics, StoreCollector, prometheus

if TYPE_CHECKING:
    from sona_store.scheduler.service import SonaScheduler, TickReport

logger = logging.getLogger("sona_store.health")

LATE_SLACK_S = 10.0


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    last_outcome: str | None = None
    last_attempt_age_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unhealthy", **asdict(self)}


class ServiceHealth:
    """Whether a scheduler is doing its job; fed by its attempts."""

    def __init__(self, scheduler: SonaScheduler, *, late_after: float | None = None):
        self.scheduler = scheduler
        if late_after is None:
            late_after = 2 * scheduler.interval.total_seconds() + scheduler.lock_timeout
            late_after += LATE_SLACK_S
        self.late_after = late_after  # seconds without an attempt: late
        self._since = time.monotonic()  # the latest attempt's end, or our start
        self._last: TickReport | None = None
        self._lock = threading.Lock()
        scheduler.add_listener(self.observe)

    def observe(self, report: TickReport) -> None:
        with self._lock:
            self._last, self._since = report, time.monotonic()

    def check(self) -> Health:
        with self._lock:
            last, age = self._last, time.monotonic() - self._since
        outcome = last.status if last is not None else None
        seen: dict[str, Any] = {
            "last_outcome": outcome,
            "last_attempt_age_seconds": None if last is None else round(age, 3),
        }
        if not self.scheduler.running:
            return Health(False, "the scheduler is not running", **seen)
        if age > self.late_after and not self.scheduler.attempt_running:
            return Health(
                False,
                f"no scheduled attempt for {age:.0f} s (one is due every "
                f"{self.scheduler.interval.total_seconds():g} s)",
                **seen,
            )
        problem = self._database_problem()
        if problem is not None:
            return Health(False, problem, **seen)
        if last is None:
            return Health(True, "waiting for the first scheduled attempt", **seen)
        return Health(True, f"the latest attempt ended {age:.0f} s ago ({outcome})", **seen)

    def _database_problem(self) -> str | None:
        engine = self.scheduler.store.engine
        try:
            with translate_errors(engine), engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return None
        except Exception as exc:
            # The driver's own error, not our wrapper's (which repeats the URL).
            root = getattr(exc.__cause__, "orig", None) or getattr(exc, "orig", None) or exc
            text = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
            return self.scheduler.scrub(f"{store_label(engine)} does not answer: {text}")


class ServiceEndpoint:
    """`/metrics` and `/healthz` over HTTP, served from a daemon thread."""

    def __init__(self, registry: Any, health: ServiceHealth, host: str, port: int):
        exposition = prometheus().exposition
        handler = _handler_class(registry, health, exposition)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sona-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _handler_class(registry: Any, health: ServiceHealth, exposition: Any) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(
                    200, exposition.CONTENT_TYPE_LATEST, exposition.generate_latest(registry)
                )
            elif path == "/healthz":
                result = health.check()
                body = json.dumps(result.to_dict()).encode()
                self._send(200 if result.ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("%s " + format, self.address_string(), *args)

    return Handler


def serve_endpoint(scheduler: SonaScheduler, host: str, port: int) -> ServiceEndpoint:
    """Metrics (the store's, this service's, the process's) and health of a
    scheduler, at http://host:port/metrics and /healthz (port 0: any free one)."""
    pc = prometheus()
    registry = pc.CollectorRegistry()
    pc.ProcessCollector(registry=registry)
    registry.register(StoreCollector(scheduler.store))
    ServiceMetrics(registry).attach(scheduler)
    endpoint = ServiceEndpoint(registry, ServiceHealth(scheduler), host, port)
    logger.info(
        "serving metrics at http://%s:%d/metrics and health at /healthz",
        endpoint.host,
        endpoint.port,
    )
    return endpoint
