"""SIGKILL a process recording through the store's writer, at random moments.

A child records from 8 threads with `wait=True` (a ninth thread flushes the
micro-LoRA now and then) and writes each id it was handed back to a file
once `end_trajectory` returns. The parent kills it after a random number of
ids, many times over one store, and checks after every kill: each id handed
back is stored, no trajectory is partial (vectors and its one step), and no
trajectory is in the micro-LoRA ledger twice; at the end, one flush applies
every stored trajectory's signal, so each is applied exactly once. A second
test queues with `wait=False`, flushes, and is killed after the flush: all
it flushed is stored.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore

from .service_helpers import sigkill_when

ROOT = Path(__file__).resolve().parent.parent
KILLS = 12  # per backend: 24 across the test
WAIT_S = 120.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
]

RECORDER = r"""
import os, sys, threading
sys.path.insert(0, sys.argv[1])
from sona_store import SonaStore
from tests.helpers import make_trajectories

url, out, seed = sys.argv[2], sys.argv[3], int(sys.argv[4])
store = SonaStore(url)
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def record(worker):
    for item in make_trajectories(400, 8, seed=seed * 100 + worker):
        b = store.begin_trajectory(item["query_embedding"])
        s = item["steps"][0]
        b.add_step(s["activations"], s["attention_weights"], s["reward"])
        tid = store.end_trajectory(b, item["quality"])
        os.write(fd, f"{tid}\n".encode())

def flusher():
    while True:
        store.flush()

threads = [threading.Thread(target=record, args=(w,), daemon=True) for w in range(8)]
threads.append(threading.Thread(target=flusher, daemon=True))
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

QUEUER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from sona_store import SonaStore
from tests.helpers import make_trajectories

url, out = sys.argv[2], sys.argv[3]
store = SonaStore(url, max_delay=5.0)
futures = []
for item in make_trajectories(300, 8, seed=5):
    b = store.begin_trajectory(item["query_embedding"])
    s = item["steps"][0]
    b.add_step(s["activations"], s["attention_weights"], s["reward"])
    futures.append(store.end_trajectory(b, item["quality"], wait=False))
store.flush()
ids = [f.result(timeout=0) for f in futures]
with open(out + ".tmp", "w") as f:
    f.write("\n".join(map(str, ids)) + "\n")
os.replace(out + ".tmp", out)
more = make_trajectories(50, 8, seed=6)
while True:  # more, never flushed, until killed
    for item in more:
        b = store.begin_trajectory(item["query_embedding"])
        store.end_trajectory(b, item["quality"], wait=False)
"""


def _handed_back(path: Path) -> list[int]:
    """The complete lines of the child's id file (the last may be cut)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [int(line) for line in text.split("\n")[:-1] if line]


def _spawn(script: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "child.py"
    path.write_text(script)
    log = (tmp_path / "child.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, str(path), str(ROOT), *args], stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        log.close()


def _kill_when(child: subprocess.Popen[bytes], ready, tmp_path: Path) -> None:
    sigkill_when(
        child, ready, tmp_path / "child.log", timeout=WAIT_S, what="get there", interval=0.005
    )


def _check(conn: sa.Connection, handed_back: list[int]) -> int:
    stored = set(conn.execute(sa.text("SELECT id FROM trajectories")).scalars())
    missing = set(handed_back) - stored
    assert not missing, f"ids handed back but not stored: {sorted(missing)[:10]}"
    vectors = conn.execute(sa.text("SELECT count(*) FROM trajectory_vectors")).scalar()
    steps = conn.execute(
        sa.text("SELECT count(DISTINCT trajectory_id), count(*) FROM trajectory_steps")
    ).one()
    assert vectors == len(stored) and tuple(steps) == (len(stored), len(stored))
    ledger = conn.execute(
        sa.text("SELECT count(*), count(DISTINCT trajectory_id) FROM micro_lora_signals")
    ).one()
    assert ledger[0] == ledger[1] <= len(stored)
    return len(stored)


def test_sigkill_while_recording_with_wait_loses_no_handed_back_id(db_url, tmp_path):
    config = SonaConfig(hidden_dim=8, micro_flush_threshold=7)
    store = SonaStore(db_url, config)
    rng = random.Random(13)
    handed_back: list[int] = []
    try:
        for kill in range(KILLS):
            out = tmp_path / f"ids{kill}.txt"
            target = rng.randint(1, 150)
            child = _spawn(RECORDER, tmp_path, db_url, str(out), str(kill))
            _kill_when(child, lambda o=out, t=target: len(_handed_back(o)) >= t, tmp_path)
            handed_back += _handed_back(out)
            with store.engine.connect() as conn:
                _check(conn, handed_back)
        assert len(handed_back) >= KILLS
        store.flush()  # the killed processes' pending signals: applied once, here
        with store.engine.connect() as conn:
            total = _check(conn, handed_back)
            applied = conn.execute(sa.text("SELECT count(*) FROM micro_lora_signals")).scalar()
        assert applied == total
    finally:
        store.close()


def test_sigkill_after_a_flush_keeps_everything_flushed(db_url, tmp_path):
    SonaStore(db_url, SonaConfig(hidden_dim=8)).close()
    out = tmp_path / "flushed.txt"
    child = _spawn(QUEUER, tmp_path, db_url, str(out))
    _kill_when(child, out.exists, tmp_path)
    flushed = _handed_back(out)
    assert len(flushed) == 300
    store = SonaStore(db_url)
    try:
        with store.engine.connect() as conn:
            _check(conn, flushed)
    finally:
        store.close()
