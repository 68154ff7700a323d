"""How much each benchmark does: the full run and `--quick`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Plan:
    cycle_n: int  # trajectories of the cycle benchmark (and of the reference's JSONL)
    cycle_reps: int
    busy_cycle_reps: int = 2  # the cycle beside a busy neighbour, each variant
    scaling: dict[str, int] = field(default_factory=dict)  # role -> trajectories
    scaling_reps: int = 1
    ingest_reps: int = 1
    single_n: int = 100  # trajectories recorded one commit each
    call_reps: int = 3
    call_min_seconds: float = 0.05
    rollback_short: int = 10
    rollback_long: int = 100
    rollback_reps: int = 5
    quarantine_cycles: int = 1_000  # history of the quarantine benchmark
    quarantine_replay: int = 100  # cycles rolled back and micro-LoRA versions replayed
    quarantine_reps: int = 3
    reference_reps: int = 1
    writers_n: int = 8_000  # trajectories of the writer-processes benchmark, all writers
    writers_reps: int = 1
    storage_n: int = 5_000  # trajectories of the storage benchmark
    storage_cycles: int = 5
    forgetting_cycles: int = 20_000  # per task, at the default base_lora_lr
    forgetting_seeds: int = 3
    record_n: int = 2_000  # trajectories of each per-call recording measurement
    record_reps: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(
    cycle_n=10_000,
    cycle_reps=5,
    busy_cycle_reps=5,
    scaling={"small": 1_000, "mid": 10_000, "large": 100_000},
    scaling_reps=5,  # a shared 2-core machine: one slow repetition must not set the median
    ingest_reps=5,
    single_n=1_000,
    call_reps=5,
    call_min_seconds=0.3,
    rollback_short=10,
    rollback_long=1_000,
    rollback_reps=20,
    quarantine_cycles=1_000,
    quarantine_replay=100,
    quarantine_reps=5,
    reference_reps=3,
    writers_n=40_000,
    writers_reps=3,
    storage_n=20_000,
    storage_cycles=10,
    record_n=5_000,
    record_reps=3,
)

QUICK = Plan(
    cycle_n=2_000,
    cycle_reps=2,
    scaling={"small": 500, "mid": 2_000, "large": 5_000},
    scaling_reps=1,
    ingest_reps=2,
    single_n=200,
    call_reps=3,
    call_min_seconds=0.05,
    rollback_short=10,
    rollback_long=100,
    rollback_reps=5,
    quarantine_cycles=120,
    quarantine_replay=100,
    quarantine_reps=2,
    reference_reps=1,
    forgetting_cycles=2_000,
    forgetting_seeds=1,
    record_n=400,
)
