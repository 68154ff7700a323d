"""Benchmark 6: quarantine of a bad batch on a store with a long history, on
the small configuration of the rollback benchmark (16 dims, 4 clusters, 10
trajectories a cycle, a micro-LoRA flush every 10 signals, so each cycle's
batch is one micro-LoRA version).

The bad batch is the batch of the `replay`-th cycle from the end: quarantining
it rolls back `replay` cycles (requeueing their other trajectories) and
replays `replay` micro-LoRA versions (the bad one, left empty, and the good
ones after it). A quarantine changes the store, so each repetition times one
quarantine on a fresh clone of the built store."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.backends import Backend
from benchmarks.report import NOT_IMPLEMENTED, Figure, not_available
from benchmarks.timing import median, progress
from benchmarks.workload import make_workload
from sona_store import SonaConfig, SonaStore

DIM = 16
CLUSTERS = 4
PER_CYCLE = 10
NAME = "quarantine_ms"


def config() -> SonaConfig:
    return SonaConfig(hidden_dim=DIM, pattern_clusters=CLUSTERS, micro_flush_threshold=PER_CYCLE)


def build(backend: Backend, cycles: int, replay: int) -> tuple[str, list[int]]:
    """A store with `cycles` cycles of history; the ids of the bad batch."""
    url = backend.new_url(f"quarantine{cycles}")
    workload = make_workload(cycles * PER_CYCLE, DIM, topics=CLUSTERS)
    bad: list[int] = []
    store = SonaStore(url, config())
    try:
        for c in range(cycles):
            ids = store.record_trajectories(
                workload.array_items(c * PER_CYCLE, (c + 1) * PER_CYCLE)
            )
            if c == cycles - replay:
                bad = ids
            if store.run_cycle(force=True).status != "completed":
                raise RuntimeError(f"history cycle {c} did not complete")
    finally:
        store.close()
    return url, bad


def bench_quarantine(backend: Backend, cycles: int, replay: int, reps: int) -> list[Figure]:
    label = f"quarantine, {cycles} cycles of history, {replay} micro versions to replay"
    if not hasattr(SonaStore, "quarantine"):
        return [not_available(NAME, backend.name, label, "ms", NOT_IMPLEMENTED)]
    template, bad = build(backend, cycles, replay)
    times: list[float] = []
    details: dict[str, object] = {"history_cycles": cycles}
    try:
        for rep in range(reps + 1):  # the first warms this process's caches: not counted
            elapsed, result = _one(backend, template, bad, f"q{rep}")
            if rep:
                times.append(elapsed)
            details.update(
                micro_versions_replayed=result.micro_versions_replayed,
                micro_versions_written=result.micro_versions_written,
                cycles_rolled_back=len(result.cycles_rolled_back),
                trajectories_requeued=result.trajectories_requeued,
            )
    finally:
        backend.drop(template)
    progress(
        f"{backend.name} quarantine ({cycles} cycles, {replay} replayed): {median(times):.1f} ms"
    )
    return [
        Figure(
            name=NAME,
            backend=backend.name,
            label=label,
            unit="ms",
            ours=median(times),
            reps=times,
            details=details,
        )
    ]


def _one(backend: Backend, template: str, bad: list[int], label: str) -> tuple[float, Any]:
    """Milliseconds one quarantine of `bad` took on a fresh clone, and its result."""
    url = backend.clone(template, label)
    store = SonaStore(url)
    try:
        start = time.perf_counter()
        result = store.quarantine(bad, reason="benchmark")
        return (time.perf_counter() - start) * 1000, result
    finally:
        store.close()
        backend.drop(url)
