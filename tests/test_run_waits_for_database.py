"""Issue 15, point 5: `sona-store run` started while its database is down
waits, logging each attempt with a growing delay, and starts cycling once the
database answers (an SQLite file whose folder appears later; a private
PostgreSQL started after the service)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from . import pgserver
from .service_helpers import cycles, inspector, wait_for

PASSWORD = "wait-Pa55word"


def _attempts(log: str) -> list[float]:
    """The delays the service announced, in order."""
    return [float(d) for d in re.findall(r"attempt \d+: .*; retrying in ([\d.]+) s", log)]


def _cycles_once_created(engine) -> list:
    try:
        return cycles(engine)
    except sa.exc.DBAPIError:  # the service has not made the schema yet
        return []


def _check_waited_then_ran(procs, proc, url: str) -> str:
    with inspector(url) as engine:
        wait_for(lambda: _cycles_once_created(engine), 120, "the service's first cycle")
    assert procs.terminate(proc, 60) == 0, procs.log(proc)
    log = procs.log(proc)
    delays = _attempts(log)
    assert len(delays) >= 2 and delays == sorted(delays) and delays[1] > delays[0], log
    assert "Traceback" not in log
    return log


@pytest.mark.slow
def test_run_waits_for_an_sqlite_folder_that_appears_later(procs, tmp_path):
    folder = tmp_path / "later"
    url = f"sqlite:///{folder / 'store.db'}"
    proc = procs.service("svc", url, "--interval", "3600")
    wait_for(lambda: len(_attempts(procs.log(proc))) >= 2, 60, "two failed attempts")
    assert proc.poll() is None, procs.log(proc)  # still waiting, not exited
    folder.mkdir()
    _check_waited_then_ran(procs, proc, url)


@pytest.mark.slow
def test_run_waits_for_a_postgresql_started_after_it(procs):
    reason = pgserver.available()
    if reason:
        pytest.skip(reason)
    server = pgserver.PgServer()
    try:
        url = server.url("sona", password=PASSWORD)
        proc = procs.service("svc", url, "--interval", "3600")
        wait_for(lambda: len(_attempts(procs.log(proc))) >= 2, 60, "two failed attempts")
        assert proc.poll() is None, procs.log(proc)
        server.start()
        server.create_database("sona")
        log = _check_waited_then_ran(procs, proc, url)
        assert PASSWORD not in log
    finally:
        server.cleanup()


def test_sigterm_while_waiting_stops_at_once(procs, tmp_path):
    url = f"sqlite:///{tmp_path / 'never' / 'store.db'}"
    proc = procs.service("svc", url, "--interval", "3600")
    wait_for(lambda: _attempts(procs.log(proc)), 60, "a failed attempt")
    assert procs.terminate(proc, 60) == 0, procs.log(proc)
    assert "stopped before the database answered" in procs.log(proc)


def test_run_once_still_fails_at_once_when_the_database_is_down(procs, tmp_path):
    url = f"sqlite:///{tmp_path / 'never' / 'store.db'}"
    proc = procs.service("svc", url, "--once")
    assert procs.wait(proc, 60) == 1
    log = procs.log(proc)
    assert log.count("\n") == 1 and "unavailable" in log, log
