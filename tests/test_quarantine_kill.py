"""SIGKILL during a quarantine leaves the store as before it or as after it,
never in between (the kill harness of tests/test_kill.py).

A child process opens the store and quarantines a bad batch, pausing inside
the transaction (after the micro-LoRA replay wrote its versions, or after the
audit row) or just after the commit; the parent kills it there and checks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from sona_store import QuarantineError, SonaStore

from .test_kill import ROOT, counts_now, kill_when_paused
from .test_quarantine import CONFIG, bad, good, learned

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
]

CHILD = r"""
import json, os, sys, time
from pathlib import Path

root, url, marker, pause_at, ids = sys.argv[1:6]
sys.path.insert(0, root)

from sona_store import SonaStore
from sona_store.services import quarantine as quarantine_module
from sona_store.db import cycles
from tests.test_kill import table_counts

store = SonaStore(url)
sessions = []

def pause(session=None):
    if session is not None:
        session.flush()
        inside = table_counts(session.connection())
    else:
        with store.engine.connect() as conn:
            inside = table_counts(conn)
    tmp = marker + ".tmp"
    Path(tmp).write_text(json.dumps({"inside": inside}))
    os.replace(tmp, marker)
    time.sleep(60)
    sys.exit(3)  # never reached: the parent kills us first

if pause_at == "replay":
    real_replay = quarantine_module.replay_without_quarantined
    def replay(session, *args, **kwargs):
        out = real_replay(session, *args, **kwargs)
        pause(session)
        return out
    quarantine_module.replay_without_quarantined = replay
elif pause_at == "audit":
    real_audit = cycles.add_audit
    def add_audit(session, **kwargs):
        out = real_audit(session, **kwargs)
        pause(session)
        return out
    quarantine_module.cycles.add_audit = add_audit

store.quarantine(json.loads(ids), reason="killed")
if pause_at == "committed":
    pause()
sys.exit(4)  # the quarantine finished without pausing
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pause_at", ["replay", "audit", "committed"])
def test_sigkill_during_a_quarantine_leaves_before_or_after(db_url, tmp_path, pause_at):
    store = SonaStore(db_url, CONFIG, head_refresh_seconds=0.0)
    try:
        store.record_trajectories(good(1))
        store.run_cycle(force=True)
        ids = store.record_trajectories(bad())
        store.record_trajectories(good(2))
        store.run_cycle(force=True)
        before = counts_now(store)
        state_before = learned(store)

        marker = tmp_path / "paused.json"
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        log = (tmp_path / "child.log").open("w")
        child = subprocess.Popen(
            [sys.executable, str(script), str(ROOT), db_url, str(marker), pause_at,
             json.dumps(ids)],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            kill_when_paused(child, marker, tmp_path / "child.log")
        finally:
            log.close()

        inside = json.loads(marker.read_text())["inside"]
        # The kill hit a quarantine that had written its rows (and, from the
        # audit row on, moved the head).
        assert inside["quarantines"] == before["quarantines"] + 1
        assert inside["lora_versions"] == before["lora_versions"] + 1
        assert inside["micro_lora_replays"] == before["micro_lora_replays"] + 1
        if pause_at != "replay":
            assert inside["head"] != before["head"]
            assert inside["audit_log"] == before["audit_log"] + 1
        if pause_at == "committed":
            assert counts_now(store) == inside  # as after
            with pytest.raises(QuarantineError, match="already quarantined"):
                store.quarantine(ids, reason="again")
            return
        assert counts_now(store) == before  # as before: nothing of it survived
        after_kill = learned(store)
        for key, value in state_before.items():
            assert (
                np.array_equal(value, after_kill[key])
                if isinstance(value, np.ndarray)
                else (value == after_kill[key])
            ), key
        # And the quarantine can be done again, whole.
        result = store.quarantine(ids, reason="again")
        assert result.micro_versions_written == 1
        assert counts_now(store)["quarantines"] == before["quarantines"] + 1
    finally:
        store.close()
