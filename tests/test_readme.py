"""Every command and code block the README shows runs as shown."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sona_store import SonaStore

from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from .helpers import make_trajectories

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands(block: str) -> list[list[str]]:
    out = []
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("sona-store "):
            out.append(shlex.split(line)[1:])
    return out


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SONA_STORE_URL"}
    if "run" in args:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sona_store.cli.main", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the service runs until told to stop
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return subprocess.run(
        [sys.executable, "-m", "sona_store.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_opens_with_the_two_commands():
    first = _blocks("bash")[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].endswith("pip install . && sona-store demo")
    assert first[1].endswith("pip install -e '.[test]' && python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci


def test_readme_gives_the_fast_subset_beside_the_full_run():
    """`-m "not slow"` is the quick loop; CI still runs every test."""
    assert 'python -m pytest -q -m "not slow"' in README
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'markers = \[\s*"slow: ', pyproject)  # registered, so -m can select it
    ci = (ROOT / ".ci" / "run").read_text()
    pytest_lines = [line for line in ci.splitlines() if "python -m pytest" in line]
    assert pytest_lines and not any("slow" in line for line in pytest_lines)


def test_python_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {
        "query_embedding": rng.uniform(-1, 1, 256).astype(np.float32),
        "activations": rng.uniform(-1, 1, 256).astype(np.float32),
        "attention_weights": [0.5, 0.5],
        "x": rng.uniform(-1, 1, 256).astype(np.float32),
    }
    tour, scheduler, metrics = _blocks("python")
    exec(compile(tour, "README tour", "exec"), namespace)
    assert namespace["result"].status == "completed"
    assert namespace["store"].history()[0].status == "completed"  # restored
    exec(compile(scheduler, "README scheduler", "exec"), namespace)
    assert not namespace["scheduler"].running
    exec(compile(metrics, "README metrics", "exec"), namespace)
    completed = {"status": "completed"}
    assert namespace["registry"].get_sample_value("sona_cycles_total", completed) == 1
    namespace["store"].close()


@pytest.mark.slow
def test_cli_tour_runs(tmp_path):
    pytest.importorskip("safetensors")
    pytest.importorskip("matplotlib")
    store = SonaStore(f"sqlite:///{tmp_path / 'sona.db'}")
    for seed in range(40):  # so that the README's `rollback 41` has its cycle 41
        store.record_trajectories(make_trajectories(3, 256, seed=seed))
        store.run_cycle(force=True)
    store.close()
    items = make_trajectories(20, 256, seed=99)
    for item in items:  # the README quarantines route model-b
        item["model_route"] = "model-b"
    lines = [json.dumps(item) for item in items]
    (tmp_path / "trajectories.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "query.json").write_text(json.dumps(make_trajectories(1, 256, seed=98)[0]))
    block = next(b for b in _blocks("bash") if "db upgrade" in b and "sqlite" in b)
    commands = _commands(block)
    assert len(commands) >= 10
    for args in commands:
        done = _cli(args, tmp_path)
        assert done.returncode == 0, (args, done.stderr)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(PG_ADMIN_URL is None, reason="no PostgreSQL configured")
def test_postgresql_commands_run(tmp_path):
    url = create_pg_database()
    try:
        block = next(b for b in _blocks("bash") if "postgresql://" in b)
        for args in _commands(block):
            args = [url if a.startswith("postgresql://") else a for a in args]
            done = _cli(args, tmp_path)
            assert done.returncode == 0, (args, done.stderr)
    finally:
        drop_pg_database(url)
