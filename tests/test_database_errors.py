"""Issue 15, point 11: a database error in any command is one line on stderr
(what the database said: no traceback, SQL, parameters or password), exit
code 1, and nothing partial is written.

A full disk is simulated honestly on each backend: on SQLite the CLI runs
with `PRAGMA max_page_count` at the file's current size (SQLite then raises
its real SQLITE_FULL, "database or disk is full"); on PostgreSQL a trigger on
every table raises SQLSTATE 53100 (disk_full), the error a server out of
space raises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db.engine import create_store_engine
from sona_store.db.models import Base

from .helpers import make_trajectories
from .service_helpers import child_env, inspector, snapshot

DIM = 8

# Runs the CLI with SQLite unable to grow the file beyond its current pages.
_FULL_SQLITE = """
import sys
import sqlalchemy as sa
from sona_store.cli.main import main

@sa.event.listens_for(sa.engine.Engine, "connect")
def _full(dbapi_connection, _record):
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
        cursor.close()

sys.exit(main(sys.argv[1:]))
"""

_DISK_FULL_FUNCTION = """
CREATE FUNCTION sona_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
    USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
END $$
"""


def _fill_disk(url: str, tmp_path: Path) -> list[str]:
    """Make the database full; returns the command prefix that runs the CLI."""
    if url.startswith("sqlite"):
        script = tmp_path / "full_sqlite.py"
        script.write_text(_FULL_SQLITE)
        return [sys.executable, str(script)]
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(_DISK_FULL_FUNCTION))
            for table in Base.metadata.sorted_tables:
                conn.execute(
                    sa.text(
                        f"CREATE TRIGGER sona_test_full BEFORE INSERT OR UPDATE ON {table.name} "
                        "FOR EACH ROW EXECUTE FUNCTION sona_test_disk_full()"
                    )
                )
    finally:
        engine.dispose()
    return [sys.executable, "-m", "sona_store.cli.main"]


def _cli(prefix: list[str], url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, "--url", url, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )


def assert_clean_database_error(done: subprocess.CompletedProcess[str]) -> None:
    err = done.stderr
    assert done.returncode == 1, (done.returncode, err)
    assert err.count("\n") == 1 and err.startswith("sona-store: error: "), err
    for leak in ("Traceback", "INSERT", "SELECT", "UPDATE", "[SQL", "parameters"):
        assert leak not in err, (leak, err)


@pytest.fixture
def learned(db_url: str, tmp_path: Path) -> tuple[str, Path, int]:
    """A store with two cycles (the first rolled back), an exported adapter
    and a JSONL file to ingest; (url, folder, first cycle)."""
    with SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=3)) as store:
        store.record_trajectories(make_trajectories(12, DIM, seed=1))
        first = store.run_cycle(force=True).cycle_id
        store.record_trajectories(make_trajectories(12, DIM, seed=2))
        store.run_cycle(force=True)
        store.rollback(first, reason="to have something to restore")
        store.record_trajectories(make_trajectories(12, DIM, seed=3))
        store.export_lora(tmp_path / "adapter")
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in make_trajectories(300, DIM, seed=4)))
    return db_url, path, first


WRITING = {
    "ingest": lambda path, first: ["ingest", str(path)],
    "cycle": lambda path, first: ["cycle", "--force"],
    "restore": lambda path, first: ["restore", str(first), "--yes"],
    "import-lora": lambda path, first: [
        "import-lora",
        str(path.parent / "adapter"),
        "--reason",
        "r",
    ],
}


@pytest.mark.parametrize("command", sorted(WRITING))
def test_a_full_disk_is_one_line_and_writes_nothing(learned, tmp_path, command):
    url, path, first = learned
    if command in ("restore", "import-lora") and url.startswith("sqlite"):
        pytest.skip("its few rows fit the file's free space: SQLite needs no new page")
    with inspector(url) as engine:
        before = snapshot(engine)
    prefix = _fill_disk(url, tmp_path)
    done = _cli(prefix, url, *WRITING[command](path, first))
    assert_clean_database_error(done)
    assert "full" in done.stderr.lower() or "no space" in done.stderr.lower(), done.stderr
    with inspector(url) as engine:
        after = snapshot(engine)
    if command == "cycle":  # the failed attempt is recorded, nothing else changes
        assert after.pop("cycles") <= before.pop("cycles") + 1
    assert after == before


# Commands that read (or write) a table the database has lost: each fails with
# the database's own one-line words.
BROKEN = [
    ("history", "cycles", ["history"]),
    ("audit", "audit_log", ["audit"]),
    ("patterns", "patterns", ["patterns", "--cycle", "2"]),
    ("stats", "patterns", ["stats"]),
    ("rollback", "cycles", ["rollback", "1", "--yes"]),
    ("lora-use", "lora_versions", ["lora-use", "1", "--reason", "r"]),
    ("export-lora", "lora_versions", ["export-lora", "{tmp}/out"]),
    ("report", "patterns", ["report", "--out", "{tmp}/report"]),
]


@pytest.mark.parametrize(("name", "table", "args"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_database_error_in_any_command_is_one_line(learned, tmp_path, name, table, args):
    url = learned[0]
    if name == "report":
        pytest.importorskip("matplotlib")
    if name == "export-lora":
        pytest.importorskip("safetensors")
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {table} RENAME TO {table}_gone"))
    finally:
        engine.dispose()
    done = _cli(
        [sys.executable, "-m", "sona_store.cli.main"],
        url,
        *(a.replace("{tmp}", str(tmp_path)) for a in args),
    )
    assert_clean_database_error(done)
    assert "database error" in done.stderr and table in done.stderr, done.stderr
