"""`sona-store demo`, the README's first command, end to end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_and_leaves_an_explorable_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SONA_STORE_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "sona_store.cli.main", "demo", "--seconds", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # The quarantine leaves every tier where a twin that never saw the batch is.
    for tier in ("micro-LoRA", "base LoRA", "EWC++", "patterns"):
        assert f"{tier:<11} bit for bit the same: True" in out, tier
        assert f"{tier:<11} differs:" in out, tier  # ... and the batch had moved it
    assert "Quarantined the source's 75 trajectories" in out
    # No line that reads as a bug: an empty forced cycle.
    assert "(0 trajectories" not in out and "skipped)" not in out
    db = tmp_path / "sona-demo.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM cycles GROUP BY status"))
        audit = conn.execute("SELECT action, reason FROM audit_log").fetchall()
        quarantined = conn.execute(
            "SELECT q.trajectory_count, count(*) FROM quarantines AS q"
            " JOIN quarantined_trajectories AS t ON t.quarantine_id = q.id GROUP BY q.id"
        ).fetchall()
        scheduled = conn.execute(
            "SELECT count(*) FROM cycles WHERE trigger = 'scheduled'"
        ).fetchone()
    assert statuses["rolled_back"] == 1
    assert statuses["completed"] >= 2
    assert scheduled[0] >= 1  # the scheduler ran cycles while traffic was recorded
    assert audit == [("quarantine", "demo: broken feedback source scored chit-chat as perfect")]
    assert quarantined == [(75, 75)]
    # Every "explore next" command it prints works.
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("sona-store "):
            args = line.split()[1:]
            if "report" in args:
                pytest.importorskip("matplotlib")
            done = subprocess.run(
                [sys.executable, "-m", "sona_store.cli.main", *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert done.returncode == 0, (line, done.stderr)
