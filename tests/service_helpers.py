"""Helpers for tests that run `sona-store run` and other processes: start and
stop them with bounded waits, and look at the database from outside."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from sona_store.db.engine import create_store_engine
from sona_store.db.locks import CYCLE_LOCK_KEY

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("SONA_STORE_URL", None)
    return env


class Processes:
    """The processes a test started; whatever is still alive at the end is
    killed (by pid, only these)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env()
            )
        self.started.append(proc)
        self.logs[proc.pid] = log
        return proc

    def service(self, name: str, url: str, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            name, [sys.executable, "-m", "sona_store.cli.main", "--url", url, "run", *args]
        )

    def paused_service(
        self, name: str, url: str, marker: Path, release: Path, *args: str
    ) -> subprocess.Popen[bytes]:
        """`sona-store --url URL run ARGS` whose cycles stop inside their
        transaction (the cycle lock held, before patterns are extracted): the
        process writes `marker` there and goes on only once `release` exists.
        A test then acts at a known point of a cycle, however fast or slow the
        machine runs it."""
        return self.script(
            name, PAUSED_SERVICE, str(marker), str(release), "--url", url, "run", *args
        )

    def script(self, name: str, source: str, *args: str) -> subprocess.Popen[bytes]:
        path = self.directory / f"{name}.py"
        path.write_text(source)
        return self.spawn(name, [sys.executable, str(path), *args])

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs.values())

    def terminate(
        self, proc: subprocess.Popen[bytes], timeout: float = 60.0, sig: int = signal.SIGTERM
    ) -> int:
        """SIGTERM (or `sig`), then wait (bounded) for the exit code."""
        proc.send_signal(sig)
        return self.wait(proc, timeout)

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(
                f"process {proc.args} did not exit within {timeout} s:\n{self.log(proc)}"
            ) from None

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


PAUSED_SERVICE = r"""
import os, sys, time
from pathlib import Path

from sona_store.cli.main import main
from sona_store.services import cycle as cycle_module

marker, release = Path(sys.argv[1]), Path(sys.argv[2])
real_extract = cycle_module.extract_patterns


def paused_extract(*args, **kwargs):
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, marker)
    deadline = time.monotonic() + 300  # never released: end with a code of our own
    while not release.exists():
        if time.monotonic() > deadline:
            os._exit(5)
        time.sleep(0.01)
    return real_extract(*args, **kwargs)


cycle_module.extract_patterns = paused_extract
sys.exit(main(sys.argv[3:]))
"""


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll until `predicate()` is truthy (returned) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(interval)


def sigkill_when(
    child: subprocess.Popen[Any],
    ready: Callable[[], Any],
    log_path: Path,
    *,
    timeout: float,
    what: str,
    interval: float,
) -> None:
    """SIGKILL `child` once `ready()` holds; fails the test (with the child's
    log) if it exits first, or if `ready()` does not hold within `timeout` s.
    The child never outlives the call."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if child.poll() is not None:
                raise AssertionError(
                    f"child exited ({child.returncode}) before it could {what}:\n"
                    + log_path.read_text()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"child did not {what} in time")
            time.sleep(interval)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


@contextmanager
def inspector(url: str) -> Iterator[Engine]:
    engine = create_store_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def cycles(engine: Engine) -> list[dict[str, Any]]:
    """Cycle records, oldest first, with timestamps as timezone-aware datetimes."""
    from sona_store.db.models import Cycle

    with engine.connect() as conn:
        result = conn.execute(sa.select(Cycle.__table__).order_by(Cycle.id))
        return [dict(r._mapping) for r in result]


def pending(engine: Engine) -> int:
    return scalar(engine, "SELECT count(*) FROM trajectories WHERE consumed_by_cycle_id IS NULL")


SNAPSHOT_TABLES = (
    "trajectories",
    "trajectory_steps",
    "cycles",
    "patterns",
    "lora_versions",
    "ewc_states",
    "ewc_task_memory",
    "vector_blobs",
    "audit_log",
)


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a cycle changes, as counts, the pending queue and the head."""
    out: dict[str, Any] = {t: scalar(engine, f"SELECT count(*) FROM {t}") for t in SNAPSHOT_TABLES}
    out["pending"] = pending(engine)
    out["head"] = rows(
        engine,
        "SELECT cycle_id, base_lora_version_id, micro_lora_version_id, ewc_state_id "
        "FROM store_head",
    )
    return out


def cycle_lock_held(url: str) -> bool:
    """Whether some process holds the store's cycle lock right now (a cycle is
    running): the PostgreSQL advisory lock, or SQLite's write lock."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return True
            raise
        finally:
            conn.close()
    engine = sa.create_engine(parsed.set(drivername="postgresql+psycopg"), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": CYCLE_LOCK_KEY}
            ).scalar()
            return not got
    finally:
        engine.dispose()
