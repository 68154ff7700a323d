"""Benchmarks 1 and 2: the whole forced cycle, and how it scales (time, peak RSS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from benchmarks.backends import Backend
from benchmarks.reference import REPO_ROOT
from benchmarks.report import Figure
from benchmarks.timing import median, progress, timed
from benchmarks.workload import iter_chunks
from sona_store import SonaConfig, SonaStore

DIM = 256
CLUSTERS = 100
MIB_PER_GIB = 1024


def cycle_config(n: int) -> SonaConfig:
    """The defaults (256 dims, 100 clusters), with the retention window raised to hold n."""
    return SonaConfig(
        hidden_dim=DIM,
        pattern_clusters=CLUSTERS,
        retention_window=max(n, 10_000),
    )


def prepare(backend: Backend, n: int) -> str:
    """A store holding n pending trajectories (recorded in batches of 1000), closed."""
    url = backend.new_url(f"prep{n}")
    store = SonaStore(url, cycle_config(n))
    try:
        for chunk in iter_chunks(n, DIM, topics=CLUSTERS):
            store.record_trajectories(chunk.array_items())
    finally:
        store.close()
    return url


def _one_cycle(url: str) -> float:
    store = SonaStore(url)
    try:
        result = None

        def run() -> None:
            nonlocal result
            result = store.run_cycle(force=True)

        seconds = timed(run)
        if result is None or result.status != "completed" or not result.patterns_extracted:
            raise RuntimeError(f"the benchmark cycle did not complete: {result}")
        return seconds
    finally:
        store.close()


@dataclass
class CycleRun:
    figure: Figure
    cycled_url: str  # a store after one cycle (for the per-call benchmarks); caller drops it


def bench_cycle(backend: Backend, template: str, n: int, reps: int) -> CycleRun:
    """Median over `reps` of store.run_cycle(force=True), each on a fresh clone."""
    times: list[float] = []
    kept = ""
    for rep in range(reps):
        url = backend.clone(template, f"cycle{rep}")
        times.append(_one_cycle(url))
        if kept:
            backend.drop(kept)
        kept = url
        progress(f"{backend.name} cycle n={n} rep {rep + 1}/{reps}: {times[-1]:.3f} s")
    figure = Figure(
        name="cycle_s",
        backend=backend.name,
        label=f"cycle {n // 1000}k x {DIM}d -> {CLUSTERS} clusters",
        unit="s",
        ours=median(times),
        reps=times,
        details={"trajectories": n, "dim": DIM, "clusters": CLUSTERS},
    )
    return CycleRun(figure, kept)


def _worker(url: str) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", url],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cycle worker failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scaling(
    backend: Backend,
    sizes: dict[str, int],
    templates: dict[int, str],
    reps: int,
) -> list[Figure]:
    """For each size: the cycle's time (in this process, warm, a fresh clone per
    rep) and its peak RSS (a fresh process per rep, since ru_maxrss is a
    per-process high-water mark). Each repetition times every size back to
    back, and the growth is the median of the per-repetition ratios: the
    shared machine's speed drifts within a run. `sizes` maps a role (small,
    mid, large) to n; `templates` maps n to a prepared store."""
    timed_reps: dict[str, list[float]] = {role: [] for role in sizes}
    for rep in range(reps):
        for role, n in sizes.items():
            url = backend.clone(templates[n], f"scale{n}_{rep}")
            try:
                timed_reps[role].append(_one_cycle(url))
            finally:
                backend.drop(url)
            progress(
                f"{backend.name} scaling n={n} rep {rep + 1}/{reps}: {timed_reps[role][-1]:.3f} s"
            )
    figures: list[Figure] = []
    medians: dict[str, float] = {}
    for role, n in sizes.items():
        seconds = timed_reps[role]
        runs = []
        for rep in range(reps):
            url = backend.clone(templates[n], f"rss{n}_{rep}")
            try:
                runs.append(_worker(url))
            finally:
                backend.drop(url)
            progress(
                f"{backend.name} scaling n={n} process {rep + 1}/{reps}: "
                f"peak {runs[-1]['peak_rss_mb']:.0f} MiB (after opening: "
                f"{runs[-1]['baseline_rss_mb']:.0f} MiB)"
            )
        peaks = [r["peak_rss_mb"] for r in runs]
        medians[role] = median(seconds)
        details = {
            "trajectories": n,
            "baseline_rss_mb": median([r["baseline_rss_mb"] for r in runs]),
            "cold_process_seconds": median([r["seconds"] for r in runs]),
            "window_size": runs[0]["window_size"],
            "patterns": runs[0]["patterns"],
        }
        figures.append(
            Figure(
                name=f"scaling_{role}_s",
                backend=backend.name,
                label=f"cycle scaling {_k(n)}: time",
                unit="s",
                ours=medians[role],
                reps=seconds,
                details=details,
            )
        )
        rss = Figure(
            name=f"scaling_{role}_rss_mb",
            backend=backend.name,
            label=f"cycle scaling {_k(n)}: peak RSS",
            unit="MiB",
            ours=median(peaks),
            reps=peaks,
            details=details,
        )
        if role == "large":
            rss.check("< 1 GiB", rss.ours is not None and rss.ours < MIB_PER_GIB)
        figures.append(rss)
    mid, large = sizes["mid"], sizes["large"]
    ratios = [b / a for a, b in zip(timed_reps["mid"], timed_reps["large"], strict=True)]
    growth = median(ratios)
    limit = large / mid
    figures.append(
        Figure(
            name="scaling_growth_x",
            backend=backend.name,
            label=f"cycle time {_k(large)} / {_k(mid)}",
            unit="x",
            ours=growth,
            reps=ratios,
            details={"linear": limit, "ratio_of_medians": medians["large"] / medians["mid"]},
        ).check(f"<= {limit:g} (linear)", growth <= limit)
    )
    return figures


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


_NEIGHBOUR = "while True: pass"  # one core's worth of pure CPU work


def bench_busy_cycle(backend: Backend, template: str, n: int, reps: int) -> list[Figure]:
    """The cycle beside a CPU-bound neighbour process (`while True: pass`),
    with the cycle's BLAS limit (`sona_store.services.cycle.CYCLE_BLAS_THREADS`) and
    without it (the BLAS library's own count), alternating within each
    repetition, each on a fresh clone; the speed-up is the median of the
    per-repetition ratios."""
    from sona_store.services import cycle as cycle_module

    limit = cycle_module.CYCLE_BLAS_THREADS
    times: dict[str, list[float]] = {"limited": [], "unlimited": []}
    neighbour = subprocess.Popen([sys.executable, "-c", _NEIGHBOUR])
    try:
        for rep in range(reps):
            order = ("limited", "unlimited") if rep % 2 == 0 else ("unlimited", "limited")
            for variant in order:
                url = backend.clone(template, f"busy{variant[:2]}{rep}")
                cycle_module.CYCLE_BLAS_THREADS = limit if variant == "limited" else None
                try:
                    times[variant].append(_one_cycle(url))
                finally:
                    cycle_module.CYCLE_BLAS_THREADS = limit
                    backend.drop(url)
            progress(
                f"{backend.name} busy cycle rep {rep + 1}/{reps}: "
                f"{times['limited'][-1]:.3f} s limited, {times['unlimited'][-1]:.3f} s not"
            )
    finally:
        neighbour.kill()
        neighbour.wait()
    details = {"trajectories": n, "neighbour": _NEIGHBOUR, "blas_threads": limit}
    figures = [
        Figure(
            name=f"cycle_busy_{variant}_s",
            backend=backend.name,
            label=f"cycle {n // 1000}k, busy neighbour, "
            + (f"{limit} BLAS thread" if variant == "limited" else "BLAS's own threads"),
            unit="s",
            ours=median(times[variant]),
            reps=times[variant],
            details=details,
        )
        for variant in ("limited", "unlimited")
    ]
    ratios = [u / lim for lim, u in zip(times["limited"], times["unlimited"], strict=True)]
    figures.append(
        Figure(
            name="cycle_busy_speedup_x",
            backend=backend.name,
            label="cycle beside a busy neighbour: unlimited / limited",
            unit="x",
            ours=median(ratios),
            reps=ratios,
            higher_is_better=True,
            details=details,
        )
    )
    return figures
