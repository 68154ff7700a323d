"""`run`: the scheduled learning service, started from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sona_store.cli.common import schema_of
from sona_store.cli.console import resolve_url, url_password
from sona_store.errors import InvalidInputError
from sona_store.scheduler import DEFAULT_GRACE_S

if TYPE_CHECKING:
    from sona_store.scheduler.service import SonaScheduler
    from sona_store.store import SonaStore

logger = logging.getLogger("sona_store.scheduler")


def cmd_run(args: argparse.Namespace) -> int:
    from sona_store.scheduler.service import SonaScheduler, service_engine_options
    from sona_store.store import SonaStore

    url = resolve_url(args)
    schema = schema_of(args)
    if args.once and args.metrics_port is not None:
        raise InvalidInputError(
            "--metrics-port serves a running service; --once exits after one attempt"
        )
    if args.log_format == "json":
        from sona_store.scheduler.logjson import use_json_logs

        use_json_logs()
    if not (args.verbose or args.quiet or args.log_level):
        logger.setLevel(logging.INFO)  # one line per cycle, even without -v

    def open_store() -> SonaStore:
        return SonaStore(
            url,
            schema=schema,
            create=True,
            actor=args.actor,
            engine_options=service_engine_options(url),
        )

    # cron retries on its own schedule: for --once an unavailable database is an error
    opened = open_store() if args.once else _wait_for_database(open_store, url_password(url))
    if opened is None:
        logger.info("stopped before the database answered")
        return 0
    with opened as store:  # closed however the service ends (but os._exit)
        if not _serve(args, store, SonaScheduler(store, args.interval, blocking=not args.once)):
            return 1
    if not args.once:
        logger.info("stopped")
    return 0


def _serve(args: argparse.Namespace, store: SonaStore, scheduler: SonaScheduler) -> bool:
    """Run the service (or, --once, the due cycle); False: --once failed."""
    if args.once:
        # Cron-style: a slot due within half an interval counts, so cron's own
        # jitter does not make it miss the slot it was started for.
        report = scheduler.run_once(early=scheduler.interval.total_seconds() / 2)
        return report.status not in ("failed", "unavailable")
    endpoint = None
    if args.metrics_port is not None:
        from sona_store.scheduler.health import serve_endpoint

        logging.getLogger("sona_store.health").setLevel(logging.INFO)
        endpoint = serve_endpoint(scheduler, args.metrics_host, args.metrics_port)
    try:
        if not scheduler.serve(grace=args.grace):
            logging.shutdown()
            os._exit(1)  # the running cycle's transaction dies with the connection
    finally:
        if endpoint is not None:
            endpoint.close()
    return True


def _wait_for_database(
    open_store: Callable[[], SonaStore], password: str | None
) -> SonaStore | None:
    """`open_when_available`, stopped by SIGTERM or SIGINT while it waits."""
    from sona_store.scheduler.service import open_when_available

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s received while waiting for the database", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return open_when_available(open_store, stop, password=password)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register_cli(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the learning cycle on a schedule (a long-running service)",
        description=(
            "Run the learning cycle every INTERVAL seconds until SIGTERM/SIGINT. Any "
            "number of services may share one database: each slot gets one cycle."
        ),
    )
    run.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="database URL (default: $SONA_STORE_URL, else sqlite:///sona.db); prefer "
        "--url-file or $SONA_STORE_URL when it holds a password",
    )
    run.add_argument(
        "--schema",
        default=argparse.SUPPRESS,
        help="PostgreSQL: the store's schema (default: $SONA_STORE_SCHEMA, else none)",
    )
    run.add_argument(
        "--interval",
        type=float,
        help="seconds between cycles (default: the store's background_interval_ms)",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="run the due cycle, if any, and exit (for cron)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds a running cycle may take to finish after SIGTERM (default: %(default)s)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at /metrics and a health check at /healthz "
        "on this port (0: any free port, logged); needs sona-store[metrics]",
    )
    run.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics port binds to (default: %(default)s; 0.0.0.0 for all)",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object a line; each attempt's line carries its fields",
    )
    run.set_defaults(func=cmd_run)
