"""SIGKILL in the middle of a cycle leaves the database as it was before the cycle
began, and the next cycle processes the same trajectories.

A child process opens the store, records trajectories, notes the row counts,
and runs a forced cycle that pauses inside its transaction (after the cycle
record and the consumption were written, or after everything including the head
move was written); the parent waits for the pause, SIGKILLs the child, and
checks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sona_store import SonaConfig, SonaStore
from sona_store.db.models import Base

from .helpers import make_trajectories
from .service_helpers import sigkill_when

ROOT = Path(__file__).resolve().parent.parent
DIM = 8
RECORDED = 13  # trajectories the child records (not a multiple of anything)
MARKER_WAIT_S = 120.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
]


def table_counts(conn: Connection) -> dict[str, Any]:
    """Row counts of every table of the schema, the pending queue, and the head."""
    out: dict[str, Any] = {
        table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        for table in sorted(Base.metadata.tables)
    }
    out["pending"] = conn.execute(
        sa.text("SELECT count(*) FROM trajectories WHERE consumed_by_cycle_id IS NULL")
    ).scalar_one()
    head = conn.execute(
        sa.text(
            "SELECT cycle_id, base_lora_version_id, micro_lora_version_id, ewc_state_id "
            "FROM store_head"
        )
    ).one()
    out["head"] = list(head)
    return out


CHILD = r"""
import json, os, sys, time
from pathlib import Path

root, url, marker, before_path, pause_at, recorded = sys.argv[1:7]
sys.path.insert(0, root)

from sona_store import SonaStore
from sona_store.services import cycle as cycle_module
from sona_store.db import state
from tests.helpers import make_trajectories
from tests.test_kill import table_counts

store = SonaStore(url)  # opened with its stored configuration
ids = store.record_trajectories(
    make_trajectories(int(recorded), store.config.hidden_dim, seed=77)
)
with store.engine.connect() as conn:
    before = table_counts(conn)
Path(before_path).write_text(json.dumps({"counts": before, "ids": ids}))

session_of_cycle = []
real_body = cycle_module.cycle_body

def body(session, *args, **kwargs):
    session_of_cycle.append(session)
    return real_body(session, *args, **kwargs)

def pause():
    session = session_of_cycle[0]
    session.flush()
    # What the cycle's own (uncommitted) transaction sees: proof it has written.
    inside = table_counts(session.connection())
    tmp = marker + ".tmp"
    Path(tmp).write_text(json.dumps({"pid": os.getpid(), "inside": inside}))
    os.replace(tmp, marker)
    time.sleep(60)
    sys.exit(3)  # never reached: the parent kills us first

cycle_module.cycle_body = body
if pause_at == "extract_patterns":
    real_extract = cycle_module.extract_patterns
    def extract(*args, **kwargs):
        pause()
        return real_extract(*args, **kwargs)
    cycle_module.extract_patterns = extract
else:
    real_move = state.move_head
    def move_head(*args, **kwargs):
        real_move(*args, **kwargs)
        pause()
    state.move_head = move_head

store.run_cycle(force=True)
sys.exit(4)  # the cycle finished: the pause did not happen
"""


def counts_now(store: SonaStore) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return table_counts(conn)


def kill_when_paused(child: subprocess.Popen[Any], marker: Path, log_path: Path) -> None:
    """SIGKILL `child` once it has written `marker` (it pauses right after);
    fails the test if it exits first or never gets there."""
    sigkill_when(
        child, marker.exists, log_path, timeout=MARKER_WAIT_S, what="reach the pause", interval=0.05
    )


@pytest.mark.parametrize("pause_at", ["extract_patterns", "move_head"])
def test_sigkill_during_a_cycle_leaves_the_database_as_before(db_url, tmp_path, pause_at):
    store = SonaStore(db_url, SonaConfig(hidden_dim=DIM, pattern_clusters=4))
    try:
        # Some history first, so "as before" includes earlier cycles' rows.
        store.record_trajectories(make_trajectories(15, DIM, seed=1))
        first = store.run_cycle(force=True)
        assert first.status == "completed"

        marker = tmp_path / "paused.json"
        before_path = tmp_path / "before.json"
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        log = (tmp_path / "child.log").open("w")
        child = subprocess.Popen(
            [sys.executable, str(script), str(ROOT), db_url, str(marker), str(before_path),
             pause_at, str(RECORDED)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )  # fmt: skip
        try:
            kill_when_paused(child, marker, tmp_path / "child.log")
        finally:
            log.close()

        recorded = json.loads(before_path.read_text())
        before, ids = recorded["counts"], recorded["ids"]
        inside = json.loads(marker.read_text())["inside"]
        assert len(ids) == RECORDED
        assert before["pending"] == RECORDED
        # The kill hit a cycle that had written: its record and the consumption ...
        assert inside["cycles"] == before["cycles"] + 1
        assert inside["pending"] == 0
        if pause_at == "move_head":
            # ... and everything else, the head move included.
            assert inside["patterns"] > before["patterns"]
            assert inside["lora_versions"] > before["lora_versions"]
            assert inside["ewc_states"] > before["ewc_states"]
            assert inside["head"] != before["head"]

        # None of it survived the kill.
        assert counts_now(store) == before
        assert [r.cycle_id for r in store.history()] == [first.cycle_id]

        # The next cycle takes exactly the trajectories the killed one had claimed.
        result = store.run_cycle(force=True)
        assert result.status == "completed"
        assert result.trajectories_processed == RECORDED
        assert result.parent_cycle_id == first.cycle_id
        with store.engine.connect() as conn:
            consumed = conn.execute(
                sa.text("SELECT id FROM trajectories WHERE consumed_by_cycle_id = :c ORDER BY id"),
                {"c": result.cycle_id},
            ).scalars()
            assert list(consumed) == sorted(ids)
        after = counts_now(store)
        assert after["cycles"] == before["cycles"] + 1
        assert after["pending"] == 0
        assert after["head"][0] == result.cycle_id
    finally:
        store.close()
