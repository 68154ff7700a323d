"""Benchmark 5: rollback and restore of the last cycle with a short and a long
history, on a small configuration (16 dims, 4 clusters, 10 trajectories a cycle)."""

from __future__ import annotations

from benchmarks.backends import Backend
from benchmarks.report import NOT_IMPLEMENTED, Figure, not_available
from benchmarks.timing import median, progress, timed
from benchmarks.workload import make_workload
from sona_store import SonaConfig, SonaStore

DIM = 16
CLUSTERS = 4
PER_CYCLE = 10


def small_config() -> SonaConfig:
    return SonaConfig(hidden_dim=DIM, pattern_clusters=CLUSTERS)


def build_history(backend: Backend, cycles: int) -> str:
    url = backend.new_url(f"hist{cycles}")
    workload = make_workload(cycles * PER_CYCLE, DIM, topics=CLUSTERS)
    store = SonaStore(url, small_config())
    try:
        for c in range(cycles):
            store.record_trajectories(workload.array_items(c * PER_CYCLE, (c + 1) * PER_CYCLE))
            result = store.run_cycle(force=True)
            if result.status != "completed":
                raise RuntimeError(f"history cycle {c} did not complete: {result}")
    finally:
        store.close()
    return url


def _time_history(url: str, reps: int) -> tuple[list[float], list[float]]:
    store = SonaStore(url)
    try:
        last = store.history(limit=1)[0].cycle_id
        store.rollback(last)  # warm: this engine's statement cache, the head cache
        store.restore(last)
        rollbacks, restores = [], []
        for _ in range(reps):
            rollbacks.append(timed(lambda: store.rollback(last)) * 1000)
            restores.append(timed(lambda: store.restore(last)) * 1000)
        return rollbacks, restores
    finally:
        store.close()


def bench_rollback(backend: Backend, short: int, long: int, reps: int) -> list[Figure]:
    if not hasattr(SonaStore, "rollback") or not hasattr(SonaStore, "restore"):
        return [
            not_available(name, backend.name, label, "ms", NOT_IMPLEMENTED)
            for name, label in _labels(short, long).items()
        ]
    labels = _labels(short, long)
    figures: list[Figure] = []
    medians: dict[str, float] = {}
    for role, cycles in (("short", short), ("long", long)):
        url = build_history(backend, cycles)
        try:
            rollbacks, restores = _time_history(url, reps)
        finally:
            backend.drop(url)
        medians[role] = median(rollbacks)
        progress(
            f"{backend.name} rollback with {cycles} cycles: {median(rollbacks):.2f} ms, "
            f"restore {median(restores):.2f} ms"
        )
        for kind, values in (("rollback", rollbacks), ("restore", restores)):
            name = f"{kind}_{role}_ms"
            figures.append(
                Figure(
                    name=name,
                    backend=backend.name,
                    label=labels[name],
                    unit="ms",
                    ours=median(values),
                    reps=values,
                    details={"history_cycles": cycles},
                )
            )
    figures.append(
        Figure(
            name="rollback_growth_x",
            backend=backend.name,
            label=labels["rollback_growth_x"],
            unit="x",
            ours=medians["long"] / medians["short"],
        )
    )
    return figures


def _labels(short: int, long: int) -> dict[str, str]:
    return {
        "rollback_short_ms": f"rollback, {short} cycles of history",
        "restore_short_ms": f"restore, {short} cycles of history",
        "rollback_long_ms": f"rollback, {long} cycles of history",
        "restore_long_ms": f"restore, {long} cycles of history",
        "rollback_growth_x": f"rollback time {long} / {short} cycles",
    }
