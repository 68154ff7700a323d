"""The command line closes every store it opens (also when a command fails),
and its help loads neither the store, SQLAlchemy nor APScheduler."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main

from .helpers import make_trajectories

DIM = 8
HEAVY = ("sona_store.store", "sqlalchemy", "apscheduler", "alembic", "psycopg")


def test_help_loads_no_store_sqlalchemy_or_apscheduler():
    """Every command's --help, in a fresh interpreter: what it imported."""
    commands = [[], ["run"], ["demo"], ["export-lora"], ["gc"], ["report"], ["history"], ["db"]]
    script = f"""
import contextlib, io, json, sys
from sona_store.cli.main import main
for command in {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*command, "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0, (command, exit_.code)
    assert "usage: sona-store" in out.getvalue(), command
print(json.dumps(sorted(sys.modules)))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout)
    heavy = [m for m in loaded if m in HEAVY or m.split(".")[0] in HEAVY[1:]]
    assert heavy == []
    assert "sona_store.cli.main" in loaded  # the check looked at the right process


@pytest.fixture
def opened_and_closed(monkeypatch):
    """Counts of SonaStore instances made and closed, while the test runs."""
    counts = {"opened": 0, "closed": 0}
    init, close = SonaStore.__init__, SonaStore.close

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        counts["opened"] += 1

    def counting_close(self):
        counts["closed"] += 1
        close(self)

    monkeypatch.setattr(SonaStore, "__init__", counting_init)
    monkeypatch.setattr(SonaStore, "close", counting_close)
    return counts


def test_every_command_closes_the_store_it_opens(db_url, tmp_path, capsys, opened_and_closed):
    SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4)).close()
    data = tmp_path / "t.jsonl"
    items = make_trajectories(30, DIM, seed=3)
    data.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    query = json.dumps(np.ones(DIM).tolist())
    commands = [
        ["ingest", str(data)],
        ["cycle", "--force"],
        ["history"],
        ["history", "--json"],
        ["patterns"],
        ["patterns", "--near", query],
        ["recommend", "--near", query, "--json"],
        ["stats", "--json"],
        ["audit"],
        ["quarantines", "--json"],
        ["retention", "show"],
        ["gc", "--older-than-days", "0", "--yes"],
        ["lora-use", "1", "--reason", "test"],
        ["rollback", "1", "--yes"],
        ["restore", "1", "--yes"],
        ["quarantine", "--ids", "1-3", "--reason", "test", "--yes"],
        ["release", "1", "--yes"],
    ]
    failing = [
        ["rollback", "999", "--yes"],  # no such cycle
        ["lora-use", "999", "--reason", "test"],  # no such version
    ]
    for command in commands + failing:
        before = dict(opened_and_closed)
        code = main(["--url", db_url, *command])
        _, err = capsys.readouterr()
        assert code == (1 if command in failing else 0), (command, err)
        assert opened_and_closed["opened"] == before["opened"] + 1, command
        assert opened_and_closed["closed"] == opened_and_closed["opened"], (command, err)
