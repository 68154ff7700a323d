"""Benchmark 4: per-call cost of apply_micro_lora, find_patterns(k=5) and
apply_base_lora on a store after one 100-cluster cycle, then of
recommend_routes(k=5) after a second cycle whose window holds ROUTED
trajectories with four routes. Each is measured only when the store has the
method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.report import NOT_IMPLEMENTED, Figure, not_available
from benchmarks.timing import median, per_call_us, progress
from benchmarks.workload import make_workload
from sona_store import SonaStore

ROUTED = 2000  # trajectories recorded with a route before the route cycle
ROUTES = ("route-a", "route-b", "route-c", "route-d")

CALLS: dict[str, tuple[str, Callable[[SonaStore, np.ndarray], Any]]] = {
    "micro_lora_us": ("apply_micro_lora", lambda s, x: s.apply_micro_lora(x)),
    "find_patterns_us": ("find_patterns", lambda s, x: s.find_patterns(x, k=5)),
    "base_lora_us": ("apply_base_lora", lambda s, x: s.apply_base_lora(0, x)),
}
ROUTE_CALL = ("recommend_routes", lambda s, x: s.recommend_routes(x, k=5))
LABELS = {
    "micro_lora_us": "apply_micro_lora (256d)",
    "find_patterns_us": "find_patterns(k=5)",
    "base_lora_us": "apply_base_lora (layer 0, 256d)",
    "recommend_routes_us": "recommend_routes(k=5, 4 routes)",
}


def _add_routes(store: SonaStore) -> None:
    """Record ROUTED trajectories with routes in turn and run a cycle, so the
    current patterns have route statistics."""
    items = make_workload(ROUTED, seed=7).array_items()
    for i, item in enumerate(items):
        item["model_route"] = ROUTES[i % len(ROUTES)]
    for start in range(0, len(items), 500):
        store.record_trajectories(items[start : start + 500])
    store.run_cycle(force=True)


def bench_calls(
    backend_name: str, url: str, probe: np.ndarray, reps: int, min_seconds: float
) -> list[Figure]:
    store = SonaStore(url)
    figures = []
    try:
        for name, (method, call) in [*CALLS.items(), ("recommend_routes_us", ROUTE_CALL)]:
            label = LABELS[name]
            if not hasattr(store, method):
                figures.append(not_available(name, backend_name, label, "us", NOT_IMPLEMENTED))
                progress(f"{backend_name} {method}: {NOT_IMPLEMENTED}")
                continue
            if name == "recommend_routes_us":
                _add_routes(store)
            try:
                result = call(store, probe)  # warm: caches, first query plans
            except TypeError as exc:  # a signature other than the one assumed here
                status = f"n/a (call failed: {exc})"
                figures.append(not_available(name, backend_name, label, "us", status))
                continue
            if name == "find_patterns_us" and len(result) == 0:
                raise RuntimeError("find_patterns returned nothing: the store has no patterns")
            if name == "recommend_routes_us" and len(result) != len(ROUTES):
                raise RuntimeError(f"recommend_routes ranked {len(result)} routes, not 4")
            times = [
                per_call_us(lambda c=call: c(store, probe), min_seconds=min_seconds)
                for _ in range(reps)
            ]
            progress(f"{backend_name} {method}: {median(times):.1f} us/call")
            figures.append(
                Figure(
                    name=name,
                    backend=backend_name,
                    label=label,
                    unit="us",
                    ours=median(times),
                    reps=times,
                )
            )
    finally:
        store.close()
    return figures
