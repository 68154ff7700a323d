"""Where stores live during a run: files in a temporary folder (SQLite) or
uniquely named databases on a PostgreSQL server, all removed afterwards.

A prepared store is cloned for each repetition (a file copy, or CREATE
DATABASE ... TEMPLATE), so every timed cycle starts from the same fresh state.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url


class Backend(Protocol):
    name: str

    def new_url(self, label: str) -> str: ...

    def clone(self, url: str, label: str) -> str: ...

    def drop(self, url: str) -> None: ...

    def close(self) -> None: ...


class SqliteBackend:
    name = "sqlite"

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="sona_bench_"))
        self._count = 0

    def _path(self, label: str) -> Path:
        self._count += 1
        return self.folder / f"{self._count:03d}_{label}.db"

    def new_url(self, label: str) -> str:
        return f"sqlite:///{self._path(label)}"

    def clone(self, url: str, label: str) -> str:
        source = Path(make_url(url).database or "")
        with sqlite3.connect(source) as conn:  # fold the WAL in: one file to copy
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        target = self._path(label)
        shutil.copyfile(source, target)
        return f"sqlite:///{target}"

    def drop(self, url: str) -> None:
        path = make_url(url).database or ""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(path + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresBackend:
    name = "postgresql"

    def __init__(self, server_url: str) -> None:
        parsed = make_url(server_url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.server = parsed
        self.run_id = uuid.uuid4().hex[:10]
        self._count = 0
        self._created: list[str] = []
        self._admin = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:  # fail early when the server is not there
            conn.execute(sa.text("SELECT 1"))

    def _name(self, label: str) -> str:
        self._count += 1
        return f"sona_bench_{self.run_id}_{self._count:03d}_{label}"[:63]

    def _create(self, name: str, template: str | None = None) -> str:
        sql = f'CREATE DATABASE "{name}"'
        if template:
            sql += f' TEMPLATE "{template}"'
        with self._admin.connect() as conn:
            conn.execute(sa.text(sql))
        self._created.append(name)
        return self.server.set(database=name).render_as_string(hide_password=False)

    def new_url(self, label: str) -> str:
        return self._create(self._name(label))

    def clone(self, url: str, label: str) -> str:
        return self._create(self._name(label), template=make_url(url).database)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self._created:
            self._created.remove(name)

    def close(self) -> None:
        for name in list(self._created):
            self.drop(self.server.set(database=name).render_as_string(hide_password=False))
        self._admin.dispose()
