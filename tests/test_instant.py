"""The instant loop through the store: golden micro-LoRA parity (also across a
process restart), exactly-once flushes, recording API, engine operations."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore

from .conftest import GOLDEN
from .helpers import make_trajectories, run_threads

MICRO_CASES = sorted((GOLDEN / "micro").glob("*.json"))


def _micro_config(case: dict) -> SonaConfig:
    c = case["config"]
    return SonaConfig(
        hidden_dim=c["hidden_dim"],
        micro_lora_rank=c["micro_lora_rank"],
        micro_lora_lr=c["micro_lora_lr"],
        micro_flush_threshold=c["flush_threshold"],
        base_lora_rank=2,
    )


def _record_live(store: SonaStore, trajectories: list[dict]) -> None:
    for t in trajectories:
        builder = store.begin_trajectory(t["query_embedding"])
        for step in t["steps"]:
            builder.add_step(step["activations"], step["attention_weights"], step["reward"])
        store.end_trajectory(builder, t["quality"])


@pytest.mark.parametrize("case_path", MICRO_CASES, ids=[p.stem for p in MICRO_CASES])
def test_micro_golden_case(case_path, db_url):
    case = json.loads(case_path.read_text())
    store = SonaStore(db_url, _micro_config(case))
    try:
        _record_live(store, case["trajectories"])
        before = store.apply_micro_lora(case["probe"])
        store.flush()
        after = store.apply_micro_lora(case["probe"])
    finally:
        store.close()
    assert np.abs(before - np.asarray(case["expected"]["output_before_flush"])).max() <= 1e-6
    assert np.abs(after - np.asarray(case["expected"]["output_after_flush"])).max() <= 1e-6


CHILD = """
import json, sys
from sona_store import SonaStore, SonaConfig
case = json.load(open(sys.argv[2]))
c = case["config"]
config = SonaConfig(hidden_dim=c["hidden_dim"], micro_lora_rank=c["micro_lora_rank"],
                    micro_lora_lr=c["micro_lora_lr"], micro_flush_threshold=c["flush_threshold"],
                    base_lora_rank=2)
store = SonaStore(sys.argv[1], config)
for t in case["trajectories"]:
    b = store.begin_trajectory(t["query_embedding"])
    for s in t["steps"]:
        b.add_step(s["activations"], s["attention_weights"], s["reward"])
    store.end_trajectory(b, t["quality"])
store.close()
"""


@pytest.mark.parametrize("case_path", MICRO_CASES[1:], ids=[p.stem for p in MICRO_CASES[1:]])
def test_micro_golden_case_across_restart(case_path, db_url):
    """Trajectories recorded by one process; the probe, flush and probe again in
    another: the weights applied at 100 signals and the pending 50 both survive."""
    subprocess.run([sys.executable, "-c", CHILD, db_url, str(case_path)], check=True, timeout=120)
    case = json.loads(case_path.read_text())
    store = SonaStore(db_url)
    try:
        before = store.apply_micro_lora(case["probe"])
        applied = store.flush()
        after = store.apply_micro_lora(case["probe"])
    finally:
        store.close()
    assert applied == len(case["trajectories"]) % 100
    assert np.abs(before - np.asarray(case["expected"]["output_before_flush"])).max() <= 1e-6
    assert np.abs(after - np.asarray(case["expected"]["output_after_flush"])).max() <= 1e-6


def test_each_signal_is_applied_exactly_once(db_url):
    config = SonaConfig(hidden_dim=8, micro_lora_lr=0.5, micro_flush_threshold=10)
    first = SonaStore(db_url, config)
    second = SonaStore(db_url)
    try:
        first.record_trajectories(make_trajectories(15, 8, seed=1))  # 10 applied, 5 pending
        second.flush()  # adopts first's 5 pending
        assert first.flush() == 0  # already applied by the other store
        with first.engine.connect() as conn:
            applied = conn.execute(sa.text("SELECT count(*) FROM micro_lora_signals")).scalar()
            distinct = conn.execute(
                sa.text("SELECT count(DISTINCT trajectory_id) FROM micro_lora_signals")
            ).scalar()
        assert applied == distinct == 15
    finally:
        first.close()
        second.close()


def test_a_signal_queued_twice_is_applied_once(db_url):
    from sona_store.services.instant import Signal

    store = SonaStore(db_url, SonaConfig(hidden_dim=8, micro_flush_threshold=1000))
    try:
        ids = store.record_trajectories(make_trajectories(5, 8))
        duplicate = Signal(ids[0], np.ones(8, dtype=np.float32), 0.5)
        store._instant._pending.append(duplicate)  # as an adoption racing an observe would
        assert store.flush() == 5
        with store.engine.connect() as conn:
            applied = conn.execute(sa.text("SELECT count(*) FROM micro_lora_signals")).scalar()
        assert applied == 5
        assert store.flush() == 0
    finally:
        store.close()


FLUSHER = """
import sys
import numpy as np
from sona_store import SonaStore
from tests.helpers import make_trajectories
store = SonaStore(sys.argv[1])
store.set_enabled(True)
seed = int(sys.argv[2])
items = make_trajectories(40, 8, seed=seed)
ids = store.record_trajectories(items)
open(sys.argv[3], "w").write("ready")
import os, time
deadline = time.time() + 30
while not os.path.exists(sys.argv[4]) and time.time() < deadline:
    time.sleep(0.005)
store.flush()
store.close()
"""


def _expected_delta(items: list[dict], config: SonaConfig) -> np.ndarray:
    from sona_store.learning.micro_lora import update_delta
    from sona_store.learning.signal import learning_signal

    from .oracles.micro_lora import MicroAccumulator

    acc = MicroAccumulator.empty(config.micro_lora_rank, config.hidden_dim)
    for t in items:
        acts = np.asarray([s["activations"] for s in t["steps"]], dtype=np.float32)
        rewards = np.asarray([s["reward"] for s in t["steps"]], dtype=np.float32)
        acc.add(
            learning_signal(np.asarray(t["query_embedding"], np.float32), acts, rewards),
            t["quality"],
        )
    grad, count = acc.take()
    return update_delta(grad, count, config.micro_lora_lr)


def test_concurrent_flushes_from_two_processes_add_up(db_url, tmp_path):
    config = SonaConfig(hidden_dim=8, micro_lora_lr=0.5, micro_flush_threshold=1000)
    SonaStore(db_url, config).close()
    go = tmp_path / "go"
    procs, ready = [], []
    for seed in (11, 12):
        flag = tmp_path / f"ready{seed}"
        ready.append(flag)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", FLUSHER, db_url, str(seed), str(flag), str(go)],
                cwd=str(GOLDEN.parent.parent.parent),
            )
        )
    deadline = time.time() + 60
    while not all(f.exists() for f in ready) and time.time() < deadline:
        time.sleep(0.01)
    go.write_text("go")
    for p in procs:
        assert p.wait(timeout=60) == 0
    store = SonaStore(db_url)
    try:
        up = store.lora_state(tier="micro").up[0]
        with store.engine.connect() as conn:
            history = conn.execute(
                sa.text(
                    "SELECT count(*) FROM lora_versions WHERE tier = 'micro' AND source = 'flush'"
                )
            ).scalar()
            ledger = conn.execute(
                sa.text("SELECT count(*), count(DISTINCT trajectory_id) FROM micro_lora_signals")
            ).one()
        # Each process applies its own 40 (two versions), or one adopted the
        # other's committed 40 and applied all 80 as one group: either way
        # every signal once.
        assert tuple(ledger) == (80, 80)
        batches = [make_trajectories(40, 8, seed=s) for s in (11, 12)]
        if history == 2:
            expected = sum(_expected_delta(items, config) for items in batches)
        else:
            assert history == 1
            with store.engine.connect() as conn:
                first = conn.execute(sa.text("SELECT min(id) FROM trajectories")).scalar()
                quality = conn.execute(
                    sa.text("SELECT quality FROM trajectories WHERE id = :i"), {"i": first}
                ).scalar()
            if quality != pytest.approx(batches[0][0]["quality"]):
                batches.reverse()  # the other process recorded first
            expected = _expected_delta(batches[0] + batches[1], config)
        np.testing.assert_allclose(up, expected, atol=1e-6)
    finally:
        store.close()


def test_recording_api_and_latency(store, monkeypatch):
    from types import SimpleNamespace

    from sona_store import recording

    # The builder's clock, stepped by hand: begin reads 10.0 s, every later
    # read 10.25 s, so the latency is exactly 250,000 µs however busy the machine.
    readings = iter([10.0])
    clock = SimpleNamespace(perf_counter=lambda: next(readings, 10.25))
    monkeypatch.setattr(recording, "time", clock)
    q = np.linspace(-1, 1, 8)
    with store.trajectory(q) as t:
        t.add_step(np.ones(8), [0.5, 0.5], 0.7, layer_name="layer-3")
        t.set_route("model-a")
        t.add_context("doc-17")
        t.quality = 0.9
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT quality, latency_us, model_route, context_ids FROM trajectories")
        ).one()
        step = conn.execute(sa.text("SELECT reward, layer_name FROM trajectory_steps")).one()
    assert row.quality == pytest.approx(0.9)
    assert row.latency_us == 250_000
    assert row.model_route == "model-a"
    assert json.loads(row.context_ids) if isinstance(row.context_ids, str) else row.context_ids
    assert step.layer_name == "layer-3"


def test_bad_live_trajectory_is_rejected_and_nothing_written(store):
    builder = store.begin_trajectory([0.1] * 8).add_step([float("nan")] * 8, [], 0.5)
    with pytest.raises(ValueError, match="activations"):
        store.end_trajectory(builder, 0.5)
    with pytest.raises(ValueError, match="quality"):
        store.end_trajectory(store.begin_trajectory([0.1] * 8), 1.5)
    assert store.stats()["trajectories_recorded"] == 0


def test_many_threads_record_at_once(db_url):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, micro_flush_threshold=7))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for item in make_trajectories(25, 8, seed=seed):
                b = store.begin_trajectory(item["query_embedding"])
                for s in item["steps"]:
                    b.add_step(s["activations"], s["attention_weights"], s["reward"])
                store.end_trajectory(b, item["quality"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    run_threads(worker, range(8))
    try:
        assert not errors
        store.flush()
        stats = store.stats()
        assert stats["trajectories_recorded"] == 200
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM micro_lora_signals")).scalar() == 200
    finally:
        store.close()


def test_find_patterns_counts_accesses_and_prune(db_url):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4), head_refresh_seconds=0)
    try:
        store.record_trajectories(make_trajectories(40, 8, seed=4))
        store.run_cycle(force=True)
        current = store.patterns()
        target = current[0]
        found = store.find_patterns(target.centroid, k=2)
        assert found[0].id == target.id
        assert len(found) == 2
        assert (
            found[1].id
            == max(
                (p for p in current if p.id != target.id),
                key=lambda p: p.similarity(target.centroid),
            ).id
        )
        store.find_patterns(target.centroid, k=1)
        store.flush()
        by_id = {p.id: p for p in store.patterns()}
        assert by_id[target.id].access_count == 2
        assert by_id[found[1].id].access_count == 1
        assert by_id[target.id].last_accessed is not None
        # Prune everything never accessed and below quality 1.1 (all three conditions).
        pruned = store.prune_patterns(min_quality=1.1, min_accesses=1, max_age_seconds=0)
        assert pruned == len(current) - 2
        remaining = {p.id for p in store.patterns()}
        assert target.id in remaining
        assert all(p.access_count >= 1 for p in store.patterns())
        assert len(store.patterns(cycle_id=target.cycle_id)) == len(current)  # history kept
        assert {p.id for p in store.find_patterns(target.centroid, k=10)} == remaining
    finally:
        store.close()


def test_find_patterns_sees_another_process_cycle(db_url):
    config = SonaConfig(hidden_dim=8, pattern_clusters=3)
    # Re-validated on every call: what is tested is that the reader's cached
    # index follows a head another store moved, not how long the cache lives.
    reader = SonaStore(db_url, config, head_refresh_seconds=0)
    writer = SonaStore(db_url, config)
    try:
        assert reader.find_patterns([0.1] * 8, 3) == []
        writer.record_trajectories(make_trajectories(20, 8, seed=5))
        result = writer.run_cycle(force=True)
        found = reader.find_patterns([0.1] * 8, 3)
        assert found and {p.cycle_id for p in found} == {result.cycle_id}
    finally:
        reader.close()
        writer.close()


def test_head_cache_does_not_keep_a_read_that_raced_an_invalidation():
    from sona_store.db.head_cache import HeadCache

    heads = iter([(1,), (2,)])
    entered, release = threading.Event(), threading.Event()

    def slow_read() -> tuple:
        head = next(heads)
        if head == (1,):
            entered.set()
            release.wait(5)
        return head

    cache = HeadCache(slow_read, refresh_seconds=60)
    reader = threading.Thread(target=cache.head)
    reader.start()
    entered.wait(5)
    cache.invalidate()  # this process moved the head meanwhile
    release.set()
    reader.join(5)
    assert cache.head() == (2,)  # not the stale (1,) read


STAT_KEYS = {
    "trajectories_recorded",
    "trajectories_buffered",
    "patterns_stored",
    "patterns_learned",
    "ewc_tasks",
    "instant_enabled",
}
REMOVED_STAT_KEYS = {"trajectories_dropped", "buffer_success_rate", "background_enabled"}


def test_stats_keys_and_meanings(db_url):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=3))
    try:
        store.record_trajectories(make_trajectories(12, 8, seed=1))
        store.run_cycle(force=True)
        store.record_trajectories(make_trajectories(4, 8, seed=2))
        stats = store.stats()
        assert set(stats) >= STAT_KEYS
        assert not set(stats) & REMOVED_STAT_KEYS  # constants that meant nothing
        assert stats["trajectories_recorded"] == 16
        assert stats["trajectories_buffered"] == 4
        assert stats["patterns_stored"] == len(store.patterns()) == 3
        assert stats["patterns_learned"] == 3
        assert stats["ewc_tasks"] == 0
        assert stats["instant_enabled"] is True
        assert stats["cycles"] == 1
        assert stats["head_cycle_id"] == store.history()[0].cycle_id
    finally:
        store.close()


def test_disabled_store_records_nothing(store):
    store.set_enabled(False)
    assert store.record_trajectories(make_trajectories(3, 8)) == []
    assert store.end_trajectory(store.begin_trajectory([0.1] * 8), 0.5) is None
    x = np.arange(8, dtype=np.float32)
    assert np.array_equal(store.apply_micro_lora(x), x)
    stats = store.stats()
    assert stats["trajectories_recorded"] == 0
    assert stats["instant_enabled"] is False
    store.set_enabled(True)
    assert len(store.record_trajectories(make_trajectories(3, 8))) == 3


def test_password_is_masked_in_stats_and_repr():
    from sona_store.db.engine import mask_url

    url = "postgresql://sona:s3cret@127.0.0.1:5432/x"
    assert "s3cret" not in mask_url(url)


def test_password_in_the_url_query_is_masked():
    from sona_store.db.engine import mask_url

    masked = mask_url("postgresql://u@127.0.0.1/db?password=s3cret&sslmode=disable")
    assert "s3cret" not in masked
    assert "sslmode=disable" in masked


@pytest.mark.parametrize(
    ("one_step", "other"),
    [(30, 10), (200, 10), (300, 0)],  # fewer and more than 64 one-step rows; only those
)
def test_batch_signals_match_the_one_by_one_signal_bit_for_bit(one_step, other):
    import random

    from sona_store.learning.signal import learning_signal
    from sona_store.services.instant import batch_signals
    from sona_store.services.validation import validate_batch

    items = (
        make_trajectories(one_step, 16, seed=1, steps=1)
        + make_trajectories(other, 16, seed=2, steps=0)
        + make_trajectories(other, 16, seed=3, steps=3)
    )
    # Norms at or below 1e-8 leave a one-step gradient unnormalised.
    for item, reward in zip(items, (0.0, 1e-12, -1e-12), strict=False):
        item["steps"][0]["reward"] = reward
    random.Random(0).shuffle(items)
    batch = validate_batch(items, SonaConfig(hidden_dim=16))
    signals = batch_signals(batch, list(range(len(items))), 16)
    for item, signal in zip(items, signals, strict=True):
        steps = item["steps"]
        acts = np.asarray([s["activations"] for s in steps], np.float32).reshape(len(steps), 16)
        rewards = np.asarray([s["reward"] for s in steps], np.float32)
        expected = learning_signal(np.asarray(item["query_embedding"], np.float32), acts, rewards)
        assert np.array_equal(signal.gradient, expected)
        assert signal.quality == item["quality"]
