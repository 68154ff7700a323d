"""Profile one benchmark operation with pyinstrument (not a dependency of the
package: `pip install pyinstrument`).

    python -m benchmarks.profiling cycle  [--n 10000] [--url URL]   # one forced cycle
    python -m benchmarks.profiling ingest [--n 10000] [--url URL]   # batched record_trajectories

The store is prepared outside the profile, as in the benchmark. --url is a
PostgreSQL server URL (a fresh database is created there and dropped); the
default is a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import cycle, ingest
from benchmarks.backends import Backend, PostgresBackend, SqliteBackend
from benchmarks.workload import make_workload
from sona_store import SonaStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("what", choices=("cycle", "ingest"))
    parser.add_argument("--n", type=int, default=10_000, help="trajectories")
    parser.add_argument("--url", help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--interval", type=float, default=0.001, help="sampling interval (s)")
    args = parser.parse_args(argv)
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: pip install pyinstrument", file=sys.stderr)
        return 2
    backend: Backend = PostgresBackend(args.url) if args.url else SqliteBackend()
    try:
        profiler = Profiler(interval=args.interval)
        if args.what == "cycle":
            template = cycle.prepare(backend, args.n)
            store = SonaStore(backend.clone(template, "profile"))
            profiler.start()
            store.run_cycle(force=True)
            profiler.stop()
        else:
            items = make_workload(args.n).items()
            store = SonaStore(backend.new_url("profile"), cycle.cycle_config(args.n))
            profiler.start()
            ingest._record_batched(store, items)
            profiler.stop()
        store.close()
        print(profiler.output_text(color=False))
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
