"""A private PostgreSQL instance for tests that stop, restart or kill the server.

Never the shared server: this one has its own temporary data directory, a free
TCP port on 127.0.0.1 and its socket in the temporary directory, and pg_ctl
addresses it through that data directory only. initdb and postgres refuse to
run as root, so as root they run as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

BIN_DIR = Path(os.environ.get("SONA_CI_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER = os.environ.get("SONA_CI_PG_USER", "postgres")


def available() -> str | None:
    """None when a private server can be started here, else why not."""
    if not (BIN_DIR / "initdb").exists() or not (BIN_DIR / "pg_ctl").exists():
        return f"no PostgreSQL binaries in {BIN_DIR}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """`start()`, `stop()`, `start()` again (same data directory and port),
    `cleanup()`. Usable as a context manager."""

    def __init__(self, password: str | None = None) -> None:
        """`password`: the postgres user needs it (scram-sha-256), else trust."""
        self.password = password
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(tempfile.mkdtemp(prefix="sona-test-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        self.sock.mkdir()
        self.data.mkdir(mode=0o700)
        if self._as_user:
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.data, self.sock):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _initdb(self) -> None:
        auth = ["-A", "trust"]
        if self.password:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._as_user:
                entry = pwd.getpwnam(SERVER_USER)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        self._run(
            [
                str(BIN_DIR / "initdb"),
                "-D",
                str(self.data),
                *auth,
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            timeout=120,
        )

    @property
    def admin_url(self) -> str:
        secret = f":{self.password}" if self.password else ""
        return f"postgresql+psycopg://postgres{secret}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, password: str | None = None) -> str:
        """A URL for `database`; trust authentication ignores the password, which
        lets tests check that logs never show one."""
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str], timeout: float) -> None:
        # cwd: the server user may not be able to read the caller's directory.
        completed = subprocess.run(
            [*self._as_user, *command],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if completed.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{command[0]} failed ({completed.returncode}): {completed.stderr}\n{log}"
            )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            [
                str(BIN_DIR / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            timeout=90,
        )
        self._wait_until_answering(30.0)

    def stop(self, mode: str = "fast") -> None:
        self._run(
            [str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
            timeout=90,
        )

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        engine = sa.create_engine(self.admin_url, connect_args={"connect_timeout": 2})
        try:
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                    return
                except sa.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def cleanup(self) -> None:
        try:
            if self.running():
                try:
                    self.stop("fast")
                except Exception:
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
