"""Issue 20's acceptance for retention, on SQLite and PostgreSQL: 20k
trajectories over 20 cycles, a zero-day policy with a horizon of one cycle.
The vectors outside the window and the horizon are gone; the SQLite file
shrinks to at most a quarter; every metadata row and every documented SQL
query still works; the archive re-ingests into a fresh store bit for bit; the
audit row exists; rollback with requeue past the horizon fails naming the
policy, within it works."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sona_store import SonaConfig, SonaStore, VectorsDroppedError
from sona_store.services.retention import file_bytes, open_jsonl

from .conftest import create_pg_database, drop_pg_database
from .test_retention import metadata, vectors
from .test_sql import SQL_BLOCKS

DIM = 128
CYCLES = 20
BATCH = 1000
WINDOW = 500
# Small learned state a cycle (one base-LoRA layer of rank 2), so the file is
# mostly trajectories, as in production where a cycle has 10k of them.
CONFIG = SonaConfig(
    hidden_dim=DIM,
    pattern_clusters=10,
    retention_window=WINDOW,
    base_lora_layers=1,
    base_lora_rank=2,
)


def batch(seed: int, n: int = BATCH) -> list[dict]:
    rng = np.random.default_rng(seed)
    queries = rng.uniform(-1, 1, (n, DIM)).astype(np.float32)
    activations = rng.uniform(-1, 1, (n, DIM)).astype(np.float32)
    attention = rng.uniform(0, 1, (n, 16)).astype(np.float32)
    return [
        {
            "query_embedding": queries[i],
            "steps": [
                {"activations": activations[i], "attention_weights": attention[i], "reward": 0.5}
            ],
            "quality": float(rng.uniform(0.2, 1.0)),
            "model_route": f"model-{i % 3}",
            "latency_us": int(rng.integers(100, 10_000)),
        }
        for i in range(n)
    ]


def fresh_url(backend: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fresh.db'}" if backend == "sqlite" else create_pg_database()


@pytest.mark.slow
def test_zero_day_policy_with_a_one_cycle_horizon(db_url, tmp_path):
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    store = SonaStore(db_url, CONFIG, actor="tester")
    other = None
    try:
        for seed in range(CYCLES):
            store.record_trajectories(batch(seed))
            assert store.run_cycle(force=True).status == "completed"
        store.record_trajectories(batch(99, 50))  # pending
        store.flush()
        rows_before = metadata(store)
        assert len(rows_before) == CYCLES * BATCH + 50
        everything = vectors(store)
        if backend == "sqlite":
            with store.engine.connect() as c:
                c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all()
        size_before = file_bytes(store.engine)

        store.set_retention_policy(older_than=0, horizon_cycles=1, archive_dir=tmp_path / "arch")
        result = store.gc()

        # The last cycle's batch, the window under it and the pending remain.
        last = CYCLES * BATCH
        kept = list(range(last - BATCH - WINDOW + 1, last + 51))
        assert sorted(vectors(store)) == kept
        assert result.trajectories == last - BATCH - WINDOW
        assert (result.first_id, result.last_id) == (1, last - BATCH - WINDOW)
        size_after = file_bytes(store.engine)
        print(f"\n{backend}: {size_before} -> {size_after} bytes ({size_after / size_before:.3f})")
        if backend == "sqlite":
            assert size_after <= 0.25 * size_before

        assert metadata(store) == rows_before
        event = store.audit_log()[0]
        assert (event["id"], event["action"]) == (result.audit_id, "gc")
        assert event["details"]["trajectories"] == result.trajectories
        assert event["details"]["archive"] == result.archive

        # The archive re-ingests into a fresh store, vectors bit for bit.
        with gzip.open(result.archive, "rt", encoding="utf-8") as f:
            archived_ids = [json.loads(line)["id"] for line in f]
        assert archived_ids == list(range(result.first_id, result.last_id + 1))
        other_url = fresh_url(backend, tmp_path)
        other = (SonaStore(other_url, CONFIG), other_url)
        with open_jsonl(result.archive) as f:
            new_ids = other[0].ingest(f)
        got = vectors(other[0])
        assert [got[i] for i in new_ids] == [everything[i] for i in archived_ids]

        # Past the horizon, a requeue needs gone vectors; within it, it works.
        with pytest.raises(VectorsDroppedError, match="rollback horizon of 1 cycle"):
            store.rollback(CYCLES - 1, requeue=True)
        assert store.head()["cycle_id"] == CYCLES
        move = store.rollback(CYCLES, requeue=True, reason="within the horizon")
        assert move.trajectories_requeued == BATCH
        again = store.run_cycle(force=True)
        assert again.status == "completed" and again.window_size == WINDOW
        assert again.trajectories_processed == BATCH + 50
        store.record_trajectories(batch(98, 5))  # pending again, for the queries

        with store.engine.connect() as c:
            for _, database, sql in SQL_BLOCKS:
                if database in (None, backend):
                    assert c.exec_driver_sql(sql).all(), sql
    finally:
        store.close()
        if other is not None:
            other[0].close()
            if backend == "postgresql":
                drop_pg_database(other[1])
