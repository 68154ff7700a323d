"""Issue 15, point 6: ways to give the database password that keep it off the
command line (`ps` shows argv to every local user): $SONA_STORE_URL,
--url-file, libpq's PGPASSWORD and PGPASSFILE; and a warning when the
password does arrive in argv. Against a private PostgreSQL that checks
passwords (scram-sha-256), so a wrong or missing one really fails."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sona_store import SonaConfig, SonaStore

from . import pgserver
from .helpers import make_trajectories
from .service_helpers import child_env, cycles, inspector, wait_for

PASSWORD = "Hunt-me-7f3a"


@pytest.fixture(scope="module")
def server() -> Iterator[pgserver.PgServer]:
    reason = pgserver.available()
    if reason:
        pytest.skip(f"cannot start a private PostgreSQL: {reason}")
    pg = pgserver.PgServer(password=PASSWORD)
    try:
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture
def database(server: pgserver.PgServer) -> str:
    """A new database's URL without the password."""
    name = f"sona_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    with SonaStore(server.url(name, PASSWORD), SonaConfig(hidden_dim=8, pattern_clusters=3)) as s:
        s.record_trajectories(make_trajectories(12, 8))
    return server.url(name)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = child_env()
    for name in ("PGPASSWORD", "PGPASSFILE"):
        environment.pop(name, None)
    environment["PGPASSFILE"] = "/nonexistent/pgpass"  # not ~/.pgpass
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sona_store.cli.main", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@")


def test_without_a_password_the_server_refuses_in_one_line(database):
    done = _cli("--url", database, "stats")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "password" in done.stderr, done.stderr


def test_sona_store_url_keeps_it_off_the_command_line(database):
    done = _cli("stats", env={"SONA_STORE_URL": _with_password(database)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and PASSWORD not in done.stdout


def test_url_file(database, tmp_path):
    path = tmp_path / "url"
    path.write_text(f"# the store\n{_with_password(database)}\n")
    path.chmod(0o600)
    done = _cli("--url-file", str(path), "stats")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and PASSWORD not in done.stdout
    path.chmod(0o644)  # readable by others: works, with a warning
    done = _cli("--url-file", str(path), "stats")
    assert done.returncode == 0, done.stderr
    assert "readable by other users" in done.stderr and PASSWORD not in done.stderr


def test_url_file_errors_are_one_line(tmp_path):
    for content in (None, "# only a comment\n\n"):
        path = tmp_path / "url"
        if content is not None:
            path.write_text(content)
        done = _cli("--url-file", str(path), "stats")
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert "--url-file" in done.stderr
    done = _cli("--url", "sqlite:///x.db", "--url-file", str(path), "stats")
    assert done.returncode == 1 and "not both" in done.stderr


@pytest.mark.parametrize("how", ["PGPASSWORD", "PGPASSFILE"])
def test_libpq_password_environment_is_honoured(database, server, tmp_path, how):
    if how == "PGPASSWORD":
        env = {"PGPASSWORD": PASSWORD}
    else:
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:{server.port}:*:postgres:{PASSWORD}\n")
        passfile.chmod(0o600)
        env = {"PGPASSFILE": str(passfile)}
    done = _cli("--url", database, "cycle", "--force", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_password_in_argv_is_warned_about_without_showing_it(database):
    done = _cli("--url", _with_password(database), "stats")
    assert done.returncode == 0, done.stderr
    [warning] = done.stderr.splitlines()
    assert warning.startswith("sona-store: warning: the password in --url is visible")
    assert PASSWORD not in done.stderr and PASSWORD not in done.stdout


@pytest.mark.slow
def test_the_service_run_the_documented_way_has_no_password_in_ps(database, tmp_path):
    environment = child_env()
    environment["SONA_STORE_URL"] = _with_password(database)
    log = tmp_path / "svc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sona_store.cli.main", "run", "--interval", "3600"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        with inspector(_with_password(database)) as engine:
            wait_for(lambda: cycles(engine), 120, "the service's first cycle")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert PASSWORD not in log.read_text()
