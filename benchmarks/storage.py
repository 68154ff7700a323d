"""Benchmark 6: bytes a trajectory keeps on disk, with and without a retention
policy, and what that projects to for a router at 100 requests/s.

Two stores of the standard workload (256 dims, one step):
- one records n trajectories with no cycle: (size - empty size) / n is the
  bytes of a trajectory kept whole, today's figure;
- the other records them over `cycles` cycles, then gc deletes every vector
  outside the retention window (zero-day policy, no horizon): (size before -
  size after) / trajectories dropped is what gc frees a trajectory, and the
  whole-trajectory figure less that is what a trajectory keeps afterwards
  (its metadata row, its micro-LoRA ledger row and their index entries).
Sizes are the SQLite file (gc gives its pages back) or the PostgreSQL tables
after VACUUM FULL: the live data autovacuum's reuse converges to in steady
state (plain VACUUM makes the space reusable without returning it).

The projection: a month at RATE trajectories/s under a policy keeping vectors
AGE_DAYS is RATE * AGE_DAYS days whole plus the rest as metadata; learned
state per cycle (LoRA, EWC++, patterns) comes on top in both cases.
"""

from __future__ import annotations

import sqlalchemy as sa

from benchmarks.backends import Backend
from benchmarks.report import Figure
from benchmarks.timing import progress
from benchmarks.workload import make_workload
from sona_store import SonaConfig, SonaStore
from sona_store.services.retention import file_bytes

RATE = 100.0  # trajectories a second
AGE_DAYS = 7.0
MONTH_DAYS = 30.0
BATCH = 1000
GB = 1e9


def _size(store: SonaStore) -> int:
    """Bytes of the store's data, the free space given back first."""
    engine = store.engine
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all()
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("VACUUM FULL"))
    return file_bytes(engine)


def _record(store: SonaStore, n: int, cycles: int) -> None:
    workload = make_workload(n)
    per_cycle = n // cycles if cycles else n
    for start in range(0, n, BATCH):
        store.record_trajectories(workload.array_items(start, min(start + BATCH, n)))
        if cycles and (start + BATCH) % per_cycle == 0:
            store.run_cycle(force=True)
    store.flush()


def bench_storage(backend: Backend, n: int, cycles: int, window: int) -> list[Figure]:
    config = SonaConfig(retention_window=window)
    whole_url, gc_url = backend.new_url("storage_whole"), backend.new_url("storage_gc")
    try:
        progress(f"{backend.name}: storage, {n:,} trajectories kept whole")
        store = SonaStore(whole_url, config)
        try:
            empty = _size(store)
            _record(store, n, 0)
            whole = (_size(store) - empty) / n
        finally:
            store.close()
        progress(f"{backend.name}: storage, {n:,} over {cycles} cycles, then gc")
        store = SonaStore(gc_url, config)
        try:
            _record(store, n, cycles)
            before = _size(store)
            result = store.gc(older_than=0)
            after = _size(store)
        finally:
            store.close()
    finally:
        backend.drop(whole_url)
        backend.drop(gc_url)
    freed = (before - after) / result.trajectories
    metadata = whole - freed
    day = RATE * 86400
    month = day * MONTH_DAYS
    recent = RATE * 86400 * AGE_DAYS
    details = {
        "trajectories": n,
        "cycles": cycles,
        "retention_window": window,
        "dropped": result.trajectories,
        "bytes_before_gc": before,
        "bytes_after_gc": after,
        "rate_per_s": RATE,
        "policy_days": AGE_DAYS,
        "month_days": MONTH_DAYS,
    }

    def figure(name: str, label: str, unit: str, value: float) -> Figure:
        return Figure(name, backend.name, label, unit, ours=value, details=details)

    return [
        figure("storage_whole_bytes", "bytes a trajectory, kept whole (today)", "B", whole),
        figure("storage_gc_freed_bytes", "bytes gc frees a trajectory", "B", freed),
        figure("storage_metadata_bytes", "bytes a trajectory keeps after gc", "B", metadata),
        figure(
            "storage_month_today_gb",
            f"a month at {RATE:g}/s, everything kept",
            "GB",
            month * whole / GB,
        ),
        figure(
            "storage_month_policy_gb",
            f"a month at {RATE:g}/s, vectors kept {AGE_DAYS:g} days",
            "GB",
            (recent * whole + (month - recent) * metadata) / GB,
        ),
        figure(
            "storage_day_today_gb", f"growth a day at {RATE:g}/s, today", "GB", day * whole / GB
        ),
        figure(
            "storage_day_policy_gb",
            f"growth a day at {RATE:g}/s past the policy's {AGE_DAYS:g} days",
            "GB",
            day * metadata / GB,
        ),
        figure(
            "storage_policy_bytes_per_trajectory",
            f"bytes a trajectory, steady state of a month, {AGE_DAYS:g}-day policy",
            "B",
            (recent * whole + (month - recent) * metadata) / month,
        ),
    ]
