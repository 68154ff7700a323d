"""Benchmark work in a fresh process.

    python -m benchmarks.worker URL
    python -m benchmarks.worker record URL FIRST COUNT BATCH

Cycle (the first form): opens the store at URL with its stored configuration,
notes the peak RSS after imports and opening (the baseline), runs one forced
cycle, and prints one JSON line: seconds, baseline_rss_mb, peak_rss_mb,
window_size, patterns (ru_maxrss is per process).

Writer (`record`, benchmarks/writers.py): opens the store, builds trajectories
FIRST .. FIRST + COUNT - 1 of the workload (numpy vectors), prints "ready",
waits for a line on stdin, records them in batches of BATCH and prints one
JSON line: start and end (time.monotonic(), one clock for every process of
the machine), the process's CPU seconds in between, and count.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.timing import peak_rss_mb
from sona_store import SonaStore


def main(argv: list[str]) -> int:
    if argv[:1] == ["record"]:
        return record(*argv[1:])
    (url,) = argv
    store = SonaStore(url)
    try:
        baseline = peak_rss_mb()
        start = time.perf_counter()
        result = store.run_cycle(force=True)
        seconds = time.perf_counter() - start
        peak = peak_rss_mb()
    finally:
        store.close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak,
                "status": result.status,
                "window_size": result.window_size,
                "patterns": result.patterns_extracted,
            }
        )
    )
    return 0 if result.status == "completed" else 1


def record(url: str, first: str, count: str, batch: str) -> int:
    from benchmarks.workload import make_workload

    start_at, n, size = int(first), int(count), int(batch)
    items = make_workload(start_at + n).array_items(start_at, start_at + n)
    store = SonaStore(url)
    try:
        store.record_trajectories(items[:0])  # connect before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        start, cpu = time.monotonic(), time.process_time()
        for offset in range(0, n, size):
            store.record_trajectories(items[offset : offset + size])
        end, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        store.close()
    print(json.dumps({"start": start, "end": end, "cpu": cpu, "count": n}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
