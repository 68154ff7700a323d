"""The shell commands of docs/: the connection lines of docs/sql.md and the
synopses of docs/lora_export.md, run with concrete values."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sona_store import SonaConfig, SonaStore

from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from .helpers import make_trajectories

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _sh_lines(doc: str) -> list[str]:
    blocks = re.findall(r"```(?:sh)?\n(.*?)```", (DOCS / doc).read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("sqlite3 ", "psql ", "sona-store ")):
                lines.append(line)
    return lines


def _populate(url: str) -> None:
    with SonaStore(url, SonaConfig(hidden_dim=8, pattern_clusters=3)) as store:
        store.record_trajectories(make_trajectories(20, 8))
        store.run_cycle(force=True)


def test_sqlite3_connection_line(tmp_path):
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell on this machine")
    [line] = [x for x in _sh_lines("sql.md") if x.startswith("sqlite3 ")]
    _populate(f"sqlite:///{tmp_path / 'sona.db'}")
    args = line.split() + ["SELECT count(*) FROM current_patterns"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 3


@pytest.mark.skipif(PG_ADMIN_URL is None, reason="no PostgreSQL configured")
def test_psql_connection_line():
    if shutil.which("psql") is None:
        pytest.skip("no psql on this machine")
    [line] = [x for x in _sh_lines("sql.md") if x.startswith("psql ")]
    url = create_pg_database()
    try:
        _populate(url)
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        args = ["psql", plain, "-At", "-c", "SELECT count(*) FROM current_patterns"]
        assert line.split()[0] == "psql"
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.strip()) == 3
    finally:
        drop_pg_database(url)


def test_lora_synopses_run_with_concrete_values(tmp_path):
    pytest.importorskip("safetensors")
    lines = _sh_lines("lora_export.md")
    assert any("export-lora" in x for x in lines) and any("lora-use" in x for x in lines)
    url = f"sqlite:///{tmp_path / 'sona.db'}"
    _populate(url)
    with SonaStore(url) as store:
        version = store.head()["base_lora_version_id"]
    concrete = {
        "OUT_DIR": str(tmp_path / "adapter"),
        "DIR": str(tmp_path / "adapter"),
        "N": str(version),
        "VERSION": str(version),
        "TEXT": "docs-test",
    }
    env = {k: v for k, v in os.environ.items() if k != "SONA_STORE_URL"}
    for line in lines:
        args = []
        for token in line.replace("[", " ").replace("]", " ").split()[1:]:
            token = "base" if token == "base|micro" else concrete.get(token, token)
            args.append(token)
        done = subprocess.run(
            [sys.executable, "-m", "sona_store.cli.main", "--url", url, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, (args, done.stderr)
