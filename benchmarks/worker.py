"""One cycle in a fresh process, for its peak memory (ru_maxrss is per process).

    python -m benchmarks.worker URL

Opens the store at URL with its stored configuration, notes the peak RSS
after imports and opening (the baseline), runs one forced cycle, and prints
one JSON line: seconds, baseline_rss_mb, peak_rss_mb, window_size, patterns.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.timing import peak_rss_mb
from sona_store import SonaStore


def main(argv: list[str]) -> int:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
