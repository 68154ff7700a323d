"""Versioned LoRA / EWC++ state and rollback by pointer (issue: versioned state)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import CycleNotFoundError, RollbackError, SonaConfig, SonaStore
from sona_store.db import state as state_repo
from sona_store.db.engine import transaction
from sona_store.learning.ewc import EwcConfig, EwcState, TaskMemory

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3, base_lora_rank=2, base_lora_lr=0.05)


def _snapshot(store: SonaStore) -> dict:
    lora = store.lora_state()
    ewc = store.ewc_state()
    return {
        "up": lora.up.copy(),
        "down": lora.down.copy(),
        "fisher": ewc.fisher.copy(),
        "weights": ewc.weights.copy(),
        "mean": ewc.grad_mean.copy(),
        "var": ewc.grad_var.copy(),
        "samples": ewc.samples_seen,
        "patterns": sorted((p.id, p.centroid.tobytes()) for p in store.patterns()),
    }


def _same(a: dict, b: dict) -> bool:
    return all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def _cycle(store: SonaStore, seed: int, n: int = 12):
    store.record_trajectories(make_trajectories(n, 8, seed=seed))
    return store.run_cycle(force=True)


@pytest.fixture
def rstore(db_url):
    s = SonaStore(db_url, CONFIG, head_refresh_seconds=0.0)
    yield s
    s.close()


def test_first_cycle_engages_ewc_and_base_lora(rstore):
    """The reference's defects 2 and 3: Fisher stayed zero, output never changed."""
    probe = np.linspace(-1, 1, 8).astype(np.float32)
    assert np.array_equal(rstore.apply_base_lora(0, probe), probe)
    assert not rstore.ewc_state().fisher.any()
    result = _cycle(rstore, 1)
    assert result.ewc_updated and result.patterns_extracted > 0
    assert np.abs(rstore.ewc_state().fisher).max() > 0
    assert rstore.ewc_state().samples_seen == 1
    outputs = [rstore.apply_base_lora(layer, probe) for layer in range(12)]
    assert all(not np.allclose(out, probe) for out in outputs)
    # The update pulls outputs toward the high-quality patterns' direction.
    gradient = np.average(
        [p.centroid for p in rstore.patterns()],
        axis=0,
        weights=[p.avg_quality * p.cluster_size for p in rstore.patterns()],
    )
    delta = rstore.apply_base_lora(0, gradient) - gradient
    assert float(delta @ gradient) > 0


def test_rollback_restores_state_bit_for_bit_and_audits(rstore):
    _cycle(rstore, 1)
    before = _snapshot(rstore)
    bad = _cycle(rstore, 2)
    later = _cycle(rstore, 3)
    after = _snapshot(rstore)
    assert not _same(before, after)

    move = rstore.rollback(bad.cycle_id, reason="bad batch", actor="alice")
    assert _same(_snapshot(rstore), before)
    assert move.cycles_rolled_back == [bad.cycle_id, later.cycle_id]
    statuses = {r.cycle_id: r.status for r in rstore.history()}
    assert statuses[bad.cycle_id] == statuses[later.cycle_id] == "rolled_back"
    (event,) = rstore.audit_log()
    assert event["action"] == "rollback"
    assert event["actor"] == "alice"
    assert event["reason"] == "bad batch"
    assert event["from_cycle_id"] == later.cycle_id
    assert event["to_cycle_id"] == bad.parent_cycle_id
    # Nothing of history was deleted: the rolled-back versions are still readable.
    assert np.array_equal(rstore.lora_state(version=later.base_lora_version_id).up, after["up"])
    assert rstore.patterns(cycle_id=later.cycle_id)

    rstore.restore(later.cycle_id, reason="it was fine")
    assert _same(_snapshot(rstore), after)
    assert {r.status for r in rstore.history()} == {"completed"}
    assert [e["action"] for e in rstore.audit_log()] == ["restore", "rollback"]


def test_rollback_without_requeue_keeps_trajectories_out_of_windows(rstore):
    _cycle(rstore, 1)
    bad = _cycle(rstore, 2)
    rstore.rollback(bad.cycle_id)
    assert rstore.pending_count() == 0
    nxt = _cycle(rstore, 3)
    assert nxt.window_size == 24  # cycle 1's 12 + the new 12; the bad 12 are out
    assert nxt.parent_cycle_id == bad.parent_cycle_id


def test_rollback_with_requeue_makes_trajectories_pending(rstore):
    _cycle(rstore, 1)
    bad = _cycle(rstore, 2)
    move = rstore.rollback(bad.cycle_id, requeue=True)
    assert move.trajectories_requeued == 12
    assert rstore.pending_count() == 12
    nxt = rstore.run_cycle(force=True)
    assert nxt.trajectories_processed == 12
    assert nxt.window_size == 24


def test_rollback_of_first_cycle_returns_to_initial_state(rstore):
    initial = _snapshot(rstore)
    first = _cycle(rstore, 1)
    rstore.rollback(first.cycle_id)
    assert _same(_snapshot(rstore), initial)
    assert rstore.patterns() == []


def test_restore_after_new_cycles_cuts_the_other_branch(rstore):
    _cycle(rstore, 1)
    old = _cycle(rstore, 2)
    old_state = _snapshot(rstore)
    rstore.rollback(old.cycle_id)
    branch = _cycle(rstore, 3)
    rstore.restore(old.cycle_id)
    assert _same(_snapshot(rstore), old_state)
    statuses = {r.cycle_id: r.status for r in rstore.history()}
    assert statuses[branch.cycle_id] == "rolled_back"
    assert statuses[old.cycle_id] == "completed"


def _table_counts(store: SonaStore) -> dict:
    with store.engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
            for t in ("cycles", "audit_log", "lora_versions", "ewc_states", "trajectories")
        }


def test_restore_of_a_requeued_cycle_is_refused(store):
    store.record_trajectories(make_trajectories(12, 8, seed=1))
    store.run_cycle(force=True)
    store.record_trajectories(make_trajectories(12, 8, seed=2))
    second = store.run_cycle(force=True)
    store.rollback(second.cycle_id, requeue=True)
    head = store.head()
    with pytest.raises(RollbackError, match="requeued"):
        store.restore(second.cycle_id)
    assert store.head() == head
    # Its trajectories go to the next cycle, once.
    assert store.run_cycle(force=True).trajectories_processed == 12


def test_invalid_rollbacks_are_refused_and_change_nothing(rstore):
    rstore.record_trajectories(make_trajectories(3, 8))
    skipped = rstore.run_cycle()
    assert skipped.status == "skipped"
    done = rstore.run_cycle(force=True)
    rstore.rollback(done.cycle_id)
    counts, head = _table_counts(rstore), rstore.head()
    with pytest.raises(CycleNotFoundError, match="no cycle with id 999"):
        rstore.rollback(999)
    with pytest.raises(RollbackError, match="already rolled back"):
        rstore.rollback(done.cycle_id)
    with pytest.raises(RollbackError, match="skipped"):
        rstore.rollback(skipped.cycle_id)
    with pytest.raises(RollbackError, match="skipped"):
        rstore.restore(skipped.cycle_id)
    rstore.restore(done.cycle_id)
    with pytest.raises(RollbackError, match="already current"):
        rstore.restore(done.cycle_id)
    rstore.rollback(done.cycle_id)
    assert _table_counts(rstore)["cycles"] == counts["cycles"]
    assert rstore.head() == head


def test_storage_per_cycle_is_bounded(rstore):
    """New blob bytes per cycle: the LoRA `up` (shared with EWC's weights) plus
    Fisher, gradient mean and variance: 4 vectors of param_count float32."""
    param_count = CONFIG.base_lora_param_count
    _cycle(rstore, 0)
    with rstore.engine.connect() as conn:
        start = conn.execute(sa.text("SELECT sum(length) FROM vector_blobs")).scalar()
    for seed in range(1, 6):
        _cycle(rstore, seed)
    with rstore.engine.connect() as conn:
        end = conn.execute(sa.text("SELECT sum(length) FROM vector_blobs")).scalar()
    per_cycle_floats = (end - start) / 5
    assert per_cycle_floats <= 4 * param_count


def test_remembered_task_fisher_is_stored_once(db_url):
    store = SonaStore(db_url, CONFIG)
    try:
        n = CONFIG.base_lora_param_count
        rng = np.random.default_rng(0)
        tasks = tuple(
            TaskMemory(
                task_id=i,
                fisher=rng.random(n, dtype=np.float32),
                optimal_weights=rng.random(n, dtype=np.float32),
            )
            for i in range(3)
        )
        base = EwcState.initial(EwcConfig(param_count=n))
        with transaction(store.engine) as session:
            blobs_before = session.scalar(sa.text("SELECT count(*) FROM vector_blobs"))
            first = state_repo.save_ewc_state(
                session, EwcState(**{**base.__dict__, "tasks": tasks}), parent_id=None
            )
            after_first = session.scalar(sa.text("SELECT count(*) FROM vector_blobs"))
            changed = EwcState(
                **{**base.__dict__, "tasks": tasks, "fisher": rng.random(n, dtype=np.float32)}
            )
            second = state_repo.save_ewc_state(session, changed, parent_id=first)
            after_second = session.scalar(sa.text("SELECT count(*) FROM vector_blobs"))
            loaded = state_repo.load_ewc_state(session, second)
        assert after_first - blobs_before == 6  # three tasks' Fisher and weights
        assert after_second - after_first == 1  # only the new current Fisher
        for saved, read in zip(tasks, loaded.tasks, strict=True):
            assert np.array_equal(saved.fisher, read.fisher)
            assert np.array_equal(saved.optimal_weights, read.optimal_weights)
    finally:
        store.close()
