"""Benchmark: live recording, one trajectory per call (begin_trajectory,
add_step, end_trajectory), as an LLM router records one per request: 1 and 8
threads, `wait=True` (the id once committed) and `wait=False` (queued, the
store's writer commits it), each call's latency, and on SQLite the WAL bytes
written per trajectory. The reference's per-call recording is measured in
the same run (its recording loop is per call already)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from sqlalchemy.engine import make_url

from benchmarks.backends import Backend
from benchmarks.cycle import cycle_config
from benchmarks.floor import floor_rate
from benchmarks.report import Figure
from benchmarks.timing import median, progress
from benchmarks.workload import Workload
from sona_store import SonaStore

# (threads, wait): the four shapes measured on each backend.
SHAPES = ((1, True), (8, True), (1, False), (8, False))
TARGETS: dict[tuple[str, int, bool], tuple[str, float]] = {
    ("sqlite", 8, True): (">= 1.0x reference, p99 < 5 ms", 1.0),
    ("sqlite", 1, False): (">= 1.0x reference, p99 < 200 us", 1.0),
    ("postgresql", 8, True): (">= 0.5x reference", 0.5),
    ("postgresql", 1, False): (">= 1.0x reference", 1.0),
}
P99_TARGET_US = {("sqlite", 8, True): 5000.0, ("sqlite", 1, False): 200.0}
WAL_TARGET_BYTES = 10 * 1024
# Trajectories of the WAL measurement: few enough that the log never reaches
# SQLite's autocheckpoint (64 MiB), so it never restarts and its size is
# every byte written.
WAL_N = 400


def _calls(store: Any, items: list[dict[str, Any]], wait: bool, out: list[float]) -> None:
    """Record `items` one call each; each call's seconds go to `out`."""
    clock = time.perf_counter
    for item in items:
        step = item["steps"][0]
        started = clock()
        t = store.begin_trajectory(item["query_embedding"])
        t.add_step(step["activations"], step["attention_weights"], step["reward"])
        store.end_trajectory(t, item["quality"], wait=wait)
        out.append(clock() - started)


def run_callers(
    recorder: Any, items: list[dict[str, Any]], threads: int, wait: bool
) -> list[float]:
    """Record `items` through `recorder` (a store or a floor) from `threads`
    threads, one call each; every call's seconds."""
    shares = [items[i::threads] for i in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(target=_calls, args=(recorder, share, wait, out))
        for share, out in zip(shares, latencies, strict=True)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [x for out in latencies for x in out]


def _wal_path(url: str) -> str:
    return f"{make_url(url).database}-wal"


def _truncate_wal(store: SonaStore) -> None:
    """Copy the log into the file and empty it (the writer is idle)."""
    raw = store.engine.raw_connection()
    try:
        cast(Any, raw.driver_connection).execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def run_shape(
    backend: Backend, items: list[dict[str, Any]], threads: int, wait: bool, **options: Any
) -> dict[str, Any]:
    """One measurement on a fresh store: rate (trajectories committed per
    second, the final flush included), call latencies, WAL bytes."""
    url = backend.new_url("record")
    store = SonaStore(url, cycle_config(len(items)), **options)
    measure_wal = backend.name == "sqlite" and len(items) <= WAL_N
    try:
        store.flush()
        if measure_wal:
            _truncate_wal(store)
        started = time.perf_counter()
        latencies = run_callers(store, items, threads, wait)
        store.flush()  # every trajectory committed (and its signal applied)
        seconds = time.perf_counter() - started
        # 32 bytes of header, then a frame (24 bytes + a page) per page written.
        wal = os.path.getsize(_wal_path(url)) - 32 if measure_wal else None
        calls = np.array(latencies) * 1e6
        recording = store.recording_stats()
    finally:
        store.close()
        backend.drop(url)
    return {
        "rate": len(items) / seconds,
        "p50_us": float(np.percentile(calls, 50)),
        "p99_us": float(np.percentile(calls, 99)),
        "wal_bytes_per_trajectory": None if wal is None else wal / len(items),
        "groups": recording.get("groups_committed"),
    }


def bench_recording(
    backend: Backend,
    workload: Workload,
    n: int,
    reps: int,
    reference_rate: Callable[[], float] | None = None,
    **options: Any,
) -> list[Figure]:
    """Every shape `reps` times, each repetition paired with a run of the
    reference's per-call recording."""
    items = workload.items()[:n]
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {shape: [] for shape in SHAPES}
    paired: list[float] = []
    for rep in range(reps):
        if reference_rate is not None:
            paired.append(reference_rate())
        for threads, wait in SHAPES:
            floor = floor_rate(items, threads, wait, run_callers)
            floor_url = backend.new_url("floor")
            try:
                commit_floor = floor_rate(items, threads, wait, run_callers, floor_url)
            finally:
                backend.drop(floor_url)
            run = run_shape(backend, items, threads, wait, **options)
            run["floor"] = floor
            run["commit_floor"] = commit_floor
            if backend.name == "sqlite":  # the log of a short run of its own
                wal = run_shape(backend, items[:WAL_N], threads, wait, **options)
                run["wal_bytes_per_trajectory"] = wal["wal_bytes_per_trajectory"]
            runs[(threads, wait)].append(run)
            progress(
                f"{backend.name} record {threads} thread(s) wait={wait} rep {rep + 1}/{reps}: "
                f"{run['rate']:,.0f}/s p50 {run['p50_us']:.0f} us p99 {run['p99_us']:.0f} us"
                + (
                    f" WAL {run['wal_bytes_per_trajectory'] / 1024:.1f} KiB/trajectory"
                    if run["wal_bytes_per_trajectory"] is not None
                    else ""
                )
                + f"; handoff floor {floor:,.0f}/s, commit floor {commit_floor:,.0f}/s"
                + (f"; reference {paired[-1]:,.0f}/s" if paired else "")
            )
    figures: list[Figure] = []
    for (threads, wait), measured in runs.items():
        figures.extend(_figures(backend, threads, wait, measured, paired, n))
    return figures


def _floor_figure(
    backend: Backend, key: str, label: str, measured: list[dict[str, Any]], run: str, title: str
) -> Figure:
    """One floor's figure (`run`: its key in each run), with each repetition's
    share of it the store reached."""
    return Figure(
        name=f"{key}_{run}_per_s",
        backend=backend.name,
        label=f"{label}: {title} (benchmarks/floor.py)",
        unit="/s",
        ours=median([r[run] for r in measured]),
        reps=[r[run] for r in measured],
        higher_is_better=True,
        details={"of_floor": [r["rate"] / r[run] for r in measured]},
    )


def _figures(
    backend: Backend,
    threads: int,
    wait: bool,
    measured: list[dict[str, Any]],
    paired: list[float],
    n: int,
) -> list[Figure]:
    mode = "wait" if wait else "nowait"
    key = f"record_{threads}t_{mode}"
    label = f"end_trajectory, {threads} thread{'s' if threads > 1 else ''}, wait={wait}"
    details = {
        "trajectories": n,
        "threads": threads,
        "wait": wait,
        "p50_us": [r["p50_us"] for r in measured],
        "p99_us": [r["p99_us"] for r in measured],
        "groups": [r["groups"] for r in measured],
    }
    rate = Figure(
        name=f"{key}_per_s",
        backend=backend.name,
        label=label,
        unit="/s",
        ours=median([r["rate"] for r in measured]),
        reps=[r["rate"] for r in measured],
        higher_is_better=True,
        details=details,
    )
    if paired:
        rate.compare_paired(paired)
    p99 = median([r["p99_us"] for r in measured])
    target = TARGETS.get((backend.name, threads, wait))
    if target is not None:
        text, ratio = target
        ok = None if rate.ratio is None else rate.ratio >= ratio
        limit = P99_TARGET_US.get((backend.name, threads, wait))
        if limit is not None and ok is not None:
            ok = ok and p99 < limit
        rate.check(text, ok)
    floor = _floor_figure(backend, key, label, measured, "floor", "handoff floor")
    commit_floor = _floor_figure(backend, key, label, measured, "commit_floor", "commit floor")
    if paired:
        floor.compare_paired(paired)
        commit_floor.compare_paired(paired)
    figures = [
        rate,
        floor,
        commit_floor,
        Figure(
            name=f"{key}_p99_us",
            backend=backend.name,
            label=f"{label}: p99 call latency",
            unit="us",
            ours=p99,
            reps=[r["p99_us"] for r in measured],
            details={"p50_us": median([r["p50_us"] for r in measured])},
        ),
    ]
    wal = [r["wal_bytes_per_trajectory"] for r in measured]
    if backend.name == "sqlite" and all(w is not None for w in wal):
        per = median([float(w) for w in wal])
        wal_figure = Figure(
            name=f"{key}_wal_bytes",
            backend=backend.name,
            label=f"{label}: WAL bytes per trajectory",
            unit="B",
            ours=per,
            reps=[float(w) for w in wal],
        )
        if threads == 8 and wait:
            wal_figure.check("<= 10 KiB", per <= WAL_TARGET_BYTES)
        figures.append(wal_figure)
    return figures
