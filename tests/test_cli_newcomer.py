"""What a new user trips over first (issue 16), through the installed console
script: misspelt URLs, driver names, missing extras, --version, pipes, the
history filters, JSON times, a destructive downgrade, compressed input, logging."""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import build_parser

from .console import SONA_STORE, assert_one_line_error, console_env, sona
from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3)
READ_ONLY = [
    ["history"],
    ["patterns"],
    ["audit"],
    ["stats"],
    ["export-lora", "out"],
    ["report", "--out", "report"],
]


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(_driver(url))
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _driver(url: str) -> sa.URL:
    parsed = make_url(url)
    return (
        parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed
    )


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


@pytest.fixture
def filled(db_url: str) -> str:
    """A store with two cycles, one rolled back (an audit row)."""
    with SonaStore(db_url, CONFIG) as store:
        for seed in (1, 2):
            store.record_trajectories(make_trajectories(12, DIM, seed=seed))
            store.run_cycle(force=True)
        store.rollback(2, reason="bad batch")
    return db_url


# -- 1. no store is created by reading ---------------------------------------------------


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_commands_do_not_create_a_store(db_url, tmp_path, command):
    proc = sona("--url", db_url, *command, cwd=tmp_path)
    if _is_sqlite(db_url):
        path = make_url(db_url).database
        assert_one_line_error(proc, path, "does not exist", "db upgrade", "ingest")
        assert not Path(path).exists()
    else:
        assert_one_line_error(proc, "no sona_store schema", "db upgrade")
        assert _tables(db_url) == set()
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()


def test_a_misspelt_sqlite_path_is_an_error_not_an_empty_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'sona-demo.db'}"
    with SonaStore(url, CONFIG) as store:
        store.record_trajectories(make_trajectories(12, DIM))
        store.run_cycle(force=True)
    typo = tmp_path / "sona-dmeo.db"
    proc = sona("--url", f"sqlite:///{typo}", "history", cwd=tmp_path)
    assert_one_line_error(proc, str(typo), "db upgrade")
    assert not typo.exists()


def test_ingest_still_creates_the_store(db_url, tmp_path):
    proc = sona("--url", db_url, "ingest", tmp_path / "missing.jsonl", cwd=tmp_path)
    assert_one_line_error(proc, "missing.jsonl")  # and no store for nothing:
    if _is_sqlite(db_url):
        assert not Path(make_url(db_url).database).exists()
    else:
        assert _tables(db_url) == set()
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in make_trajectories(3, 256)))
    proc = sona("--url", db_url, "ingest", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = sona("--url", db_url, "stats", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout)["trajectories_recorded"] == 3


def test_url_is_accepted_after_the_command(filled, tmp_path):
    proc = sona("history", "--url", filled, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [c["cycle_id"] for c in json.loads(proc.stdout)] == [2, 1]
    proc = sona("db", "current", "--url", filled, cwd=tmp_path)
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stderr
    # after the command it wins over the one before it
    proc = sona("--url", "sqlite:///elsewhere.db", "stats", "--url", filled, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "elsewhere.db").exists()


# -- 2. and 3. PostgreSQL driver names and the postgres extra ------------------------------


def test_psycopg2_urls_use_psycopg_3(filled, tmp_path):
    if _is_sqlite(filled):
        pytest.skip("a PostgreSQL URL")
    url = make_url(filled).set(drivername="postgresql+psycopg2").render_as_string(False)
    proc = sona("--url", url, "stats", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["trajectories_recorded"] == 24
    with SonaStore(url) as store:  # the library too
        assert store.engine.dialect.driver == "psycopg"


def test_another_postgresql_driver_is_one_line_saying_what_to_write(tmp_path):
    env = console_env(SONA_STORE_URL="postgresql+asyncpg://u:secret@db-host/sona")
    proc = sona("stats", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "asyncpg", "psycopg 3", "write postgresql://u:***@db-host/sona")
    assert "secret" not in proc.stderr


def test_postgresql_without_psycopg_names_the_extra(tmp_path):
    """psycopg hidden by a package that fails to import, as when it is absent."""
    shim = tmp_path / "shim" / "psycopg"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named psycopg')\n")
    env = console_env(PYTHONPATH=str(shim.parent))
    proc = sona("--url", "postgresql://postgres@127.0.0.1/x", "stats", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "psycopg", "pip install 'sona-store[postgres]'")


# -- 4. --version and python -m -------------------------------------------------------------


def test_version_comes_from_the_installed_metadata(tmp_path):
    expected = f"sona-store {version('sona-store')}"
    proc = sona("--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout.strip()) == (0, expected)
    module = subprocess.run(
        [sys.executable, "-m", "sona_store", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert (module.returncode, module.stdout.strip()) == (0, expected)
    import sona_store

    assert sona_store.__version__ == version("sona-store")


# -- 7. a closed pipe -------------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly_as_unix_tools_do(filled, tmp_path):
    """`sona-store patterns | head -2`, with head gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [str(SONA_STORE), "--url", filled, "history"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=console_env(),
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell shows for `head`'s writer


# -- 8. history filters ----------------------------------------------------------------------


@pytest.mark.slow
def test_history_filters_by_status_and_time(filled, tmp_path):
    def cycles(*args: str) -> list[tuple[int, str]]:
        proc = sona("--url", filled, "history", "--json", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return [(c["cycle_id"], c["status"]) for c in json.loads(proc.stdout)]

    assert cycles() == [(2, "rolled_back"), (1, "completed")]
    assert cycles("--status", "rolled_back") == [(2, "rolled_back")]
    assert cycles("--status", "completed", "--status", "rolled_back") == cycles()
    assert cycles("--status", "skipped") == []
    with SonaStore(filled) as store:
        second = store.cycle(2).started_at
    assert cycles("--since", second.isoformat()) == [(2, "rolled_back")]
    assert cycles("--since", "1d") == cycles()
    later = (second + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert cycles("--since", later) == []  # naive: read as UTC
    proc = sona("--url", filled, "history", "--since", "yesterday", cwd=tmp_path)
    assert proc.returncode == 2 and "30m, 12h, 7d" in proc.stderr
    proc = sona("--url", filled, "history", "--status", "done", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


# -- 9. the smaller ones ------------------------------------------------------------------------


def test_audit_and_history_json_write_iso_times(filled, tmp_path):
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")
    audit = json.loads(sona("--url", filled, "audit", "--json", cwd=tmp_path).stdout)
    history = json.loads(sona("--url", filled, "history", "--json", cwd=tmp_path).stdout)
    assert audit and iso.match(audit[0]["at"]), audit[0]["at"]
    assert all(iso.match(c["started_at"]) for c in history)


def test_db_downgrade_asks_and_refuses_without_yes(filled, tmp_path):
    with SonaStore(filled) as store:
        before = store.stats()["trajectories_recorded"]
    proc = sona("--url", filled, "db", "downgrade", "base", cwd=tmp_path)
    assert_one_line_error(proc, "drops every table", "--yes")
    with SonaStore(filled) as store:
        assert store.stats()["trajectories_recorded"] == before
    proc = sona("--url", filled, "db", "downgrade", "base", "--yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not {"cycles", "trajectories"} & _tables(filled)


def test_ingest_reads_gzip_and_names_a_file_that_is_not_utf8(db_url, tmp_path):
    lines = "".join(json.dumps(t) + "\n" for t in make_trajectories(5, 256))
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(lines.encode()))
    proc = sona("--url", db_url, "ingest", packed, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "recorded 5 trajectories" in proc.stdout
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(lines.encode() + b'{"model_route": "caf\xe9"}\n')
    proc = sona("--url", db_url, "ingest", bad, cwd=tmp_path)
    assert_one_line_error(proc, str(bad), "line 6", "not UTF-8")
    with SonaStore(db_url) as store:
        assert store.stats()["trajectories_recorded"] == 5  # nothing of the bad file


def test_logging_options_and_no_alembic_noise(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = sona("-v", "--url", url, "db", "upgrade", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Context impl" not in proc.stderr
    proc = sona("--log-level", "debug", "--url", url, "db", "current", cwd=tmp_path)
    assert proc.returncode == 0 and "Context impl" in proc.stderr, proc.stderr
    proc = sona("-q", "--url", url, "stats", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = sona("-q", "-v", "stats", cwd=tmp_path)
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def _every_parser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_parser(sub)


def test_every_option_and_argument_has_help_text():
    missing = [
        f"{parser.prog}: {action.option_strings or action.dest}"
        for parser in _every_parser(build_parser())
        for action in parser._actions
        if action.help is None and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []
