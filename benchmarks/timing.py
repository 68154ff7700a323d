"""Clocks, medians and peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_call_us(fn: Callable[[], object], *, min_seconds: float, min_calls: int = 10) -> float:
    """Mean microseconds per call over at least `min_calls` calls and `min_seconds`."""
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while calls < min_calls or elapsed < min_seconds:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
    return elapsed * 1e6 / calls


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's
    own memory map. Not ru_maxrss there: Linux carries ru_maxrss over fork and
    exec, so a fresh child would report at least its parent's size at the
    fork. Elsewhere: ru_maxrss (KiB on Linux and BSD, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
