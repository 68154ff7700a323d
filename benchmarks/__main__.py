"""python -m benchmarks [--quick] [--url URL] [--seed-engine PATH] [--output FILE]

Runs every benchmark on SQLite (and on PostgreSQL with --url), the reference on
the same workload when node and @ruvector/sona are available, prints one table
and writes the results as JSON. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import (
    calls,
    cycle,
    forgetting,
    ingest,
    quarantine,
    recording,
    reference,
    rollback,
    storage,
    writers,
)
from benchmarks.backends import Backend, PostgresBackend, SqliteBackend
from benchmarks.plan import FULL, QUICK, Plan
from benchmarks.report import Figure, table, write_json
from benchmarks.timing import progress
from benchmarks.workload import make_workload

DEFAULT_OUTPUT = reference.REPO_ROOT / "benchmarks" / "results" / "latest.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--url", help="PostgreSQL server URL: also run on a fresh database there")
    parser.add_argument(
        "--seed-engine",
        metavar="PATH_TO_NODE_MODULES",
        help="node_modules holding @ruvector/sona@0.1.8 (default: $NODE_PATH)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument(
        "--only",
        metavar="SECTION[,SECTION]",
        help=f"run only these sections ({', '.join(SECTIONS)}); for development",
    )
    return parser.parse_args(argv)


SECTIONS = (
    "cycle",
    "scaling",
    "ingest",
    "recording",
    "calls",
    "rollback",
    "quarantine",
    "storage",
    "forgetting",
)


def run_backend(
    backend: Backend,
    plan: Plan,
    ref: reference.ReferenceResult,
    errors: list[str],
    reference_rate: Callable[[], float] | None = None,
    only: set[str] | None = None,
) -> list[Figure]:
    """Every benchmark on one backend (or the `only` sections). `reference_rate`:
    the reference's recording rate, measured anew on each call (the ingest
    and recording repetitions pair with it)."""
    figures: list[Figure] = []

    def section(name: str, body: Callable[[], list[Figure]]) -> None:
        if only is not None and name not in only:
            return
        try:
            figures.extend(body())
        except Exception:  # report and go on: one broken section must not hide the rest
            text = traceback.format_exc()
            errors.append(f"{backend.name} {name}: {text.strip().splitlines()[-1]}")
            progress(f"{backend.name} {name} FAILED:\n{text}")

    sizes = sorted({plan.cycle_n, *plan.scaling.values()})
    if only is not None and not only & {"cycle", "scaling", "calls"}:
        sizes = []
    templates: dict[int, str] = {}
    for n in sizes:
        progress(f"{backend.name}: preparing a store of {n:,} trajectories")
        templates[n] = cycle.prepare(backend, n)

    cycled: list[str] = []

    def cycle_section() -> list[Figure]:
        run = cycle.bench_cycle(backend, templates[plan.cycle_n], plan.cycle_n, plan.cycle_reps)
        cycled.append(run.cycled_url)
        f = run.figure.compare(ref.median("cycle_s"))
        return [f.check(">= 10x reference", None if f.ratio is None else f.ratio >= 10)]

    section("cycle", cycle_section)
    section(
        "busy cycle",
        lambda: cycle.bench_busy_cycle(
            backend, templates[plan.cycle_n], plan.cycle_n, plan.busy_cycle_reps
        ),
    )
    section(
        "scaling",
        lambda: cycle.bench_scaling(backend, plan.scaling, templates, plan.scaling_reps),
    )
    for url in templates.values():
        backend.drop(url)

    def ingest_section() -> list[Figure]:
        out = ingest.bench_ingest(
            backend,
            make_workload(plan.cycle_n),
            plan.single_n,
            plan.ingest_reps,
            reference_rate,
        )
        for f in out:
            if f.name in (
                "ingest_batched_per_s",
                "ingest_batched_numpy_per_s",
                "ingest_batched_100_per_s",
                "ingest_batched_100_numpy_per_s",
            ):
                if "paired_ratios" not in f.details:  # no paired reference: seed_bench's
                    f.compare(ref.median("record_per_s"))
                f.check(">= reference", None if f.ratio is None else f.ratio >= 1)
            elif f.name == "ingest_single_per_s":
                f.compare(ref.median("record_per_s"))
        return out

    section("ingest", ingest_section)
    section(
        "recording",
        lambda: recording.bench_recording(
            backend, make_workload(plan.record_n), plan.record_n, plan.record_reps, reference_rate
        ),
    )
    section("writers", lambda: writers.bench_writers(backend, plan.writers_n, plan.writers_reps))

    def calls_section() -> list[Figure]:
        if not cycled:
            raise RuntimeError("no cycled store (the cycle benchmark failed)")
        probe = make_workload(1).queries[0].astype(np.float32)
        out = calls.bench_calls(
            backend.name, cycled[0], probe, plan.call_reps, plan.call_min_seconds
        )
        for f in out:
            key = {"micro_lora_us": "micro_lora_us", "find_patterns_us": "find_patterns_us"}
            if f.name in key and f.ours is not None:
                f.compare(ref.median(key[f.name]))
                f.check(">= 5x reference", None if f.ratio is None else f.ratio >= 5)
        return out

    section("calls", calls_section)
    for url in cycled:
        backend.drop(url)
    section(
        "rollback",
        lambda: rollback.bench_rollback(
            backend, plan.rollback_short, plan.rollback_long, plan.rollback_reps
        ),
    )
    section(
        "quarantine",
        lambda: quarantine.bench_quarantine(
            backend, plan.quarantine_cycles, plan.quarantine_replay, plan.quarantine_reps
        ),
    )
    section(
        "storage",
        lambda: storage.bench_storage(
            backend, plan.storage_n, plan.storage_cycles, window=plan.storage_n // 10
        ),
    )
    return figures


def machine() -> dict[str, Any]:
    def command(*args: str) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    lscpu = command("lscpu").splitlines()
    root = str(reference.REPO_ROOT)
    return {
        "nproc": command("nproc") or str(os.cpu_count()),
        "cpu_model": next(
            (line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")),
            platform.processor(),
        ),
        "lscpu_head": lscpu[:10],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
        "node": command("node", "--version"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": command("git", "-C", root, "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(command("git", "-C", root, "status", "--porcelain", "sona_store")),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    started = dt.datetime.now(dt.timezone.utc)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sona_bench_") as scratch:
        jsonl = Path(scratch) / f"workload_{plan.cycle_n}.jsonl"
        make_workload(plan.cycle_n).write_jsonl(jsonl)
        progress(f"workload: {plan.cycle_n:,} trajectories -> {jsonl.name}")
        only = set(args.only.split(",")) if args.only else None
        if only is not None and only - set(SECTIONS):
            raise SystemExit(f"unknown section(s): {', '.join(sorted(only - set(SECTIONS)))}")
        ref = reference.check(args.seed_engine)
        # Sections that compare with seed_bench.js's medians need its full runs.
        if ref.available and (only is None or only & {"cycle", "ingest", "calls"}):
            progress(f"reference: {plan.reference_reps} run(s) of seed_bench.js")
            ref = reference.run(jsonl, cycle.CLUSTERS, args.seed_engine, plan.reference_reps)
        progress(ref.message if not ref.available else f"reference: {ref.median('cycle_s')} s")
        reference_rate = None
        if ref.available:

            def reference_rate() -> float:
                return reference.record_rate(jsonl, cycle.CLUSTERS, args.seed_engine)

        figures: list[Figure] = []
        backends: list[Callable[[], Backend]] = [SqliteBackend]
        if args.url:
            backends.append(lambda: PostgresBackend(args.url))
        for make in backends:
            try:
                backend = make()
            except Exception as exc:
                errors.append(f"backend: {exc}")
                progress(f"backend unavailable: {exc}")
                continue
            try:
                figures.extend(run_backend(backend, plan, ref, errors, reference_rate, only))
            finally:
                backend.close()
        if only is None or "forgetting" in only:
            progress(f"forgetting: {plan.forgetting_seeds} task draw(s)")
            try:  # pure learning, no database: once, not per backend
                figures.extend(forgetting.figures(plan.forgetting_cycles, plan.forgetting_seeds))
            except Exception:
                errors.append(f"forgetting: {traceback.format_exc().strip().splitlines()[-1]}")

    payload = {
        "generated_at": started.isoformat(),
        "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
        "quick": args.quick,
        "plan": plan.to_dict(),
        "machine": machine(),
        "reference": ref.summary(),
        "errors": errors,
    }
    write_json(args.output, payload, figures)
    print(table(figures))
    print(f"\nreference: {ref.message}")
    for error in errors:
        print(f"ERROR {error}")
    print(f"results: {args.output} ({payload['seconds']:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
