"""Benchmark 7: writer processes recording into one store at once.

Each repetition records the same trajectories twice into fresh stores: once
from one process, once split among WRITERS processes
(`python -m benchmarks.worker record`), started, made ready (store open,
trajectories built) and then released together. The rate is the trajectories
over the time from the first writer's start to the last one's end; the
scaling is the ratio of the two rates within a repetition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.backends import Backend
from benchmarks.cycle import cycle_config
from benchmarks.reference import REPO_ROOT
from benchmarks.report import Figure
from benchmarks.timing import median, progress
from sona_store import SonaStore

WRITERS = 4
BATCH = 100  # live recording's scale: every batch's micro-LoRA flush is due


def _rate(backend: Backend, n: int, writers: int) -> tuple[float, float]:
    """Trajectories a second, and the writers' CPU microseconds a trajectory."""
    url = backend.new_url(f"writers{writers}")
    SonaStore(url, cycle_config(n)).close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    share = n // writers
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", "record", url]
            + [str(i * share), str(share), str(BATCH)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a writer process failed before it was ready")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        runs = []
        for process in processes:
            out, _ = process.communicate(timeout=3600)
            if process.returncode != 0:
                raise RuntimeError(f"a writer process failed (exit {process.returncode})")
            runs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        backend.drop(url)
    seconds = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    count = sum(r["count"] for r in runs)
    return count / seconds, sum(r["cpu"] for r in runs) * 1e6 / count


def bench_writers(backend: Backend, n: int, reps: int) -> list[Figure]:
    one: list[float] = []
    many: list[float] = []
    cpu: dict[int, list[float]] = {1: [], WRITERS: []}
    for rep in range(reps):
        for writers, rates in ((1, one), (WRITERS, many)):
            rate, cpu_us = _rate(backend, n, writers)
            rates.append(rate)
            cpu[writers].append(cpu_us)
        progress(
            f"{backend.name} writers rep {rep + 1}/{reps}: 1 process {one[-1]:,.0f}/s "
            f"({cpu[1][-1]:.0f} CPU us a trajectory), {WRITERS} processes {many[-1]:,.0f}/s "
            f"({cpu[WRITERS][-1]:.0f} us)"
        )
    details = {
        "trajectories": n,
        "batch": BATCH,
        "input": "numpy vectors",
        "writer_cpu_us_per_trajectory": {str(k): median(v) for k, v in cpu.items()},
    }
    ratios = [m / o for o, m in zip(one, many, strict=True)]
    scaling = Figure(
        name="writers_scaling_x",
        backend=backend.name,
        label=f"{WRITERS} writer processes / 1",
        unit="x",
        ours=median(ratios),
        reps=ratios,
        higher_is_better=True,
        details=details,
    )
    if backend.name == "postgresql":  # SQLite's writers take turns on its one write lock
        scaling.check(">= 1.3", median(ratios) >= 1.3)
    return [
        Figure(
            name="writers_1_per_s",
            backend=backend.name,
            label=f"recording from 1 process, batches of {BATCH}",
            unit="/s",
            ours=median(one),
            reps=one,
            higher_is_better=True,
            details=details,
        ),
        Figure(
            name=f"writers_{WRITERS}_per_s",
            backend=backend.name,
            label=f"recording from {WRITERS} processes at once, batches of {BATCH}",
            unit="/s",
            ours=median(many),
            reps=many,
            higher_is_better=True,
            details=details,
        ),
        scaling,
    ]
