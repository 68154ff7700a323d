"""Quarantine (issue 17): a batch of trajectories undone in every learned tier,
as if it had never been recorded; release."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import QuarantineError, RollbackError, SonaConfig, SonaStore
from sona_store.errors import QuarantineNotFoundError

from .helpers import make_trajectories

DIM = 8
# The flush threshold divides every batch size below, so each batch is applied
# to the micro-LoRA whole, in its own groups.
CONFIG = SonaConfig(
    hidden_dim=DIM,
    pattern_clusters=3,
    base_lora_rank=2,
    base_lora_lr=0.05,
    micro_lora_lr=0.01,
    micro_flush_threshold=4,
)


def good(seed: int, n: int = 12) -> list[dict]:
    return make_trajectories(n, DIM, seed=seed)


def bad(n: int = 8) -> list[dict]:
    """Mis-scored, off-distribution trajectories: large, all 'perfect'."""
    items = make_trajectories(n, DIM, seed=99, quality=1.0)
    for item in items:
        item["query_embedding"] = [3.0 * v for v in item["query_embedding"]]
        item["model_route"] = "broken-client"
    return items


def learned(store: SonaStore) -> dict:
    """Every learned tier, patterns by content."""
    base = store.lora_state()
    micro = store.lora_state(tier="micro")
    ewc = store.ewc_state()
    return {
        "micro_up": micro.up.copy(),
        "micro_down": micro.down.copy(),
        "base_up": base.up.copy(),
        "base_down": base.down.copy(),
        "fisher": ewc.fisher.copy(),
        "weights": ewc.weights.copy(),
        "mean": ewc.grad_mean.copy(),
        "var": ewc.grad_var.copy(),
        "ewc_scalars": (ewc.samples_seen, ewc.task_id, ewc.lambda_, len(ewc.tasks)),
        "tasks": [
            (t.task_id, t.importance, t.fisher.tobytes(), t.optimal_weights.tobytes())
            for t in ewc.tasks
        ],  # fmt: skip
        "patterns": sorted(
            (p.centroid.tobytes(), p.cluster_size, p.total_weight, p.avg_quality)
            for p in store.patterns()
        ),
    }


def assert_same(a: dict, b: dict) -> None:
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def differs(a: dict, b: dict, key: str) -> bool:
    return not np.array_equal(a[key], b[key])


@pytest.fixture
def stores(db_url, tmp_path):
    """Store A on the backend under test; store B (the control) beside it."""
    a = SonaStore(db_url, CONFIG, head_refresh_seconds=0.0)
    b = SonaStore(f"sqlite:///{tmp_path / 'control.db'}", CONFIG, head_refresh_seconds=0.0)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_quarantined_batch_leaves_every_tier_as_if_never_recorded(stores):
    """The defining test: A (G1, cycle, B, G2, cycle, quarantine B, cycle) ends
    bit for bit where B-store (G1, cycle, G2, cycle) is."""
    a, control = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    bad_ids = a.record_trajectories(bad())
    a.record_trajectories(good(2))
    second = a.run_cycle(force=True)
    polluted = learned(a)

    control.record_trajectories(good(1))
    control.run_cycle(force=True)
    control.record_trajectories(good(2))
    control.run_cycle(force=True)
    expected = learned(control)
    for key in ("micro_up", "base_up", "fisher", "patterns"):
        assert (
            differs(polluted, expected, key)
            if key != "patterns"
            else (polluted[key] != expected[key])
        ), key

    result = a.quarantine(bad_ids, reason="broken client")
    assert result.trajectories == len(bad_ids)
    assert result.cycles_rolled_back == [second.cycle_id]
    assert result.trajectories_requeued == 12
    assert result.micro_versions_replayed == 2  # B's version (left empty) and G2's
    assert result.micro_versions_written == 1
    assert result.micro_signals_removed == len(bad_ids)
    assert result.micro_lora_distance > 0 and result.base_lora_distance > 0
    assert a.pending_count() == 12

    third = a.run_cycle(force=True)
    assert third.trajectories_processed == 12
    assert third.window_size == 24  # G1 and G2: the bad batch is in no window
    assert_same(learned(a), expected)


def mixed(seed: int) -> list[dict]:
    """12 trajectories of no step, one and three (each signal path of Loop A)."""
    return [
        item
        for steps in (0, 1, 3)
        for item in make_trajectories(4, DIM, seed=seed * 10 + steps, steps=steps)
    ]


def test_as_if_never_recorded_with_steps_of_every_count(stores):
    """The replay recomputes signals from the stored vectors: bit for bit what
    recording computed, whatever the number of steps."""
    a, control = stores
    a.record_trajectories(mixed(1))
    a.run_cycle(force=True)
    bad_ids = a.record_trajectories(bad())
    a.record_trajectories(mixed(2))
    a.record_trajectories(mixed(3))
    a.run_cycle(force=True)
    a.quarantine(bad_ids, reason="bad")
    a.run_cycle(force=True)
    for seed in (1, 2, 3):
        control.record_trajectories(mixed(seed))
        if seed != 2:
            control.run_cycle(force=True)
    assert_same(learned(a), learned(control))


def test_quarantine_by_route_time_and_context(stores):
    a, _ = stores
    a.record_trajectories(good(1))
    items = bad()
    items[0]["context_ids"] = ["poisoned-source"]
    items[1]["context_ids"] = ["other", "poisoned-source"]
    bad_ids = a.record_trajectories(items)
    a.record_trajectories(good(2))
    with a.engine.connect() as conn:
        created = dict(conn.execute(sa.text("SELECT id, created_at FROM trajectories")).all())
    with pytest.raises(QuarantineError, match="no trajectory matches"):
        a.quarantine(model_route="no-such-route", reason="x")
    by_context = a.quarantine(context_id="poisoned-source", reason="poisoned feedback source")
    assert by_context.trajectories == 2
    a.release(by_context.quarantine_id)
    # Criteria combine: ids that exist but fail another criterion are not taken.
    both = a.quarantine(
        [1, *bad_ids[:5]], model_route="broken-client", context_id="poisoned-source", reason="x"
    )
    assert both.trajectories == 2
    assert a.quarantines()[0]["selection"] == {
        "ids": f"1,{bad_ids[0]}-{bad_ids[4]}",
        "model_route": "broken-client",
        "context_id": "poisoned-source",
    }
    a.release(both.quarantine_id)
    by_route = a.quarantine(model_route="broken-client", reason="broken client")
    assert by_route.trajectories == len(bad_ids)
    a.release(by_route.quarantine_id)
    # A time interval: [from, to) around the bad batch's recording time.
    stamps = sorted({_as_utc(created[i]) for i in bad_ids})
    window = a.quarantine(
        recorded_from=stamps[0],
        recorded_to=stamps[-1] + dt.timedelta(microseconds=1),
        model_route="broken-client",
        reason="the broken client's hour",
    )
    assert window.trajectories == len(bad_ids)


def _as_utc(value) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def test_quarantine_of_trajectories_no_cycle_consumed(stores):
    """No cycle is rolled back; the micro-LoRA is replayed; the next cycle
    never sees them."""
    a, control = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    bad_ids = a.record_trajectories(bad())
    result = a.quarantine(bad_ids, reason="caught before the cycle")
    assert result.cycles_rolled_back == []
    assert result.base_lora_distance == 0.0
    assert result.micro_versions_replayed == 1 and result.micro_versions_written == 0
    assert a.pending_count() == 0
    a.record_trajectories(good(2))
    nxt = a.run_cycle(force=True)
    assert nxt.trajectories_processed == 12

    control.record_trajectories(good(1))
    control.run_cycle(force=True)
    control.record_trajectories(good(2))
    control.run_cycle(force=True)
    assert_same(learned(a), learned(control))


def test_quarantine_spread_over_several_cycles(stores):
    """Bad trajectories in three cycles: all three (and the good ones after)
    are rolled back and relearned without them."""
    a, control = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    bad_ids: list[int] = []
    rolled = []
    for seed in (2, 3, 4):
        bad_ids += a.record_trajectories(bad(4))
        a.record_trajectories(good(seed, 8))
        rolled.append(a.run_cycle(force=True).cycle_id)
    result = a.quarantine(bad_ids, reason="three bad batches")
    assert result.cycles_rolled_back == rolled
    assert result.trajectories_requeued == 24
    assert result.micro_versions_replayed == 6
    assert result.micro_versions_written == 3
    a.run_cycle(force=True)

    control.record_trajectories(good(1))
    control.run_cycle(force=True)
    for seed in (2, 3, 4):
        control.record_trajectories(good(seed, 8))
    control.run_cycle(force=True)
    assert_same(learned(a), learned(control))


def test_quarantine_of_nothing_is_a_clear_error_and_writes_nothing(stores):
    a, _ = stores
    a.record_trajectories(good(1))
    before = table_counts(a)
    with pytest.raises(QuarantineError, match="name the trajectories"):
        a.quarantine(reason="nothing named")
    with pytest.raises(QuarantineError, match="ids is empty"):
        a.quarantine([], reason="empty list")
    with pytest.raises(QuarantineError, match="no trajectory with id 500-501"):
        a.quarantine([1, 500, 501], reason="typo")
    with pytest.raises(QuarantineError, match="reason"):
        a.quarantine([1], reason="  ")
    with pytest.raises(QuarantineError, match="not an integer"):
        a.quarantine([1.5], reason="x")
    with pytest.raises(QuarantineError, match="recorded_from must be before"):
        a.quarantine(recorded_from="2030-01-02", recorded_to="2030-01-01", reason="x")
    with pytest.raises(QuarantineError, match="no trajectory matches"):
        a.quarantine(recorded_from="2999-01-01", reason="the future")
    assert table_counts(a) == before


def test_quarantine_twice_is_an_error(stores):
    a, _ = stores
    ids = a.record_trajectories(bad())
    first = a.quarantine(ids, reason="first")
    before = table_counts(a)
    with pytest.raises(
        QuarantineError, match=f"already quarantined .*quarantine {first.quarantine_id}"
    ):
        a.quarantine(ids[:2], reason="second")
    assert table_counts(a) == before
    a.release(first.quarantine_id, reason="false alarm")
    with pytest.raises(QuarantineError, match="already released"):
        a.release(first.quarantine_id)
    with pytest.raises(QuarantineNotFoundError):
        a.release(12345)


def test_release_restores_eligibility(stores):
    """Released trajectories are pending for the next cycle, and their signals
    are applied by the next flush, exactly once."""
    a, _ = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    bad_ids = a.record_trajectories(bad())
    a.run_cycle(force=True)
    q = a.quarantine(bad_ids, reason="suspected")
    assert a.pending_count() == 0
    assert a.stats()["trajectories_quarantined"] == len(bad_ids)
    assert a.run_cycle(force=True).status == "skipped"
    assert a.flush() == 0
    released = a.release(q.quarantine_id, reason="it was fine")
    assert released.trajectories == len(bad_ids) and released.pending_again == len(bad_ids)
    assert a.pending_count() == len(bad_ids)
    assert a.stats()["trajectories_quarantined"] == 0
    assert a.flush() == len(bad_ids)
    assert a.flush() == 0
    with a.engine.connect() as conn:
        ledger = conn.execute(
            sa.text("SELECT count(*) FROM micro_lora_signals WHERE trajectory_id >= :lo"),
            {"lo": bad_ids[0]},
        ).scalar_one()
    assert ledger == len(bad_ids)
    nxt = a.run_cycle(force=True)
    assert nxt.trajectories_processed == len(bad_ids)
    actions = [e["action"] for e in a.audit_log()]
    assert actions == ["release", "quarantine"]


def test_restore_of_a_cycle_a_quarantine_rolled_back_is_refused(stores):
    a, _ = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    bad_ids = a.record_trajectories(bad())
    poisoned = a.run_cycle(force=True)  # learned from the bad batch only
    a.quarantine(bad_ids, reason="bad")
    with pytest.raises(RollbackError, match="quarantine"):
        a.restore(poisoned.cycle_id)


def test_one_audit_row_visible_in_cycle_audit_and_history_kept(stores):
    a, _ = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    micro_before = a.head()["micro_lora_version_id"]
    bad_ids = a.record_trajectories(bad())
    a.record_trajectories(good(2))
    cycle = a.run_cycle(force=True)
    versions_before = table_counts(a)["lora_versions"]
    result = a.quarantine(bad_ids, reason="broken client", actor="alice")
    (event,) = a.audit_log()
    assert event["id"] == result.audit_id
    assert (event["action"], event["actor"], event["reason"]) == (
        "quarantine",
        "alice",
        "broken client",
    )
    assert event["details"]["quarantine_id"] == result.quarantine_id
    assert event["details"]["cycles_rolled_back"] == [cycle.cycle_id]
    with a.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT event, actor, reason FROM cycle_audit WHERE audit_id = :i"),
            {"i": result.audit_id},
        ).all()
        old = conn.execute(
            sa.text("SELECT count(*) FROM lora_versions WHERE tier = 'micro' AND id > :v"),
            {"v": micro_before},
        ).scalar_one()
    assert [tuple(r) for r in rows] == [("quarantine", "alice", "broken client")]
    # Old micro versions stay; one new version is the head.
    assert table_counts(a)["lora_versions"] == versions_before + 1
    assert old == 3
    assert a.head()["micro_lora_version_id"] > micro_before
    assert a.quarantines()[0]["trajectories"] == len(bad_ids)


def test_pending_signals_of_quarantined_trajectories_are_never_applied(db_url):
    """A store that still holds quarantined trajectories' signals in memory (an
    incomplete group) drops them at its next flush; a release applies them."""
    config = SonaConfig(hidden_dim=DIM, pattern_clusters=3, micro_flush_threshold=100)
    writer = SonaStore(db_url, config)
    other = SonaStore(db_url, config)
    try:
        ids = writer.record_trajectories(bad(6))
        assert writer.pending_signals == 6
        q = other.quarantine(ids, reason="bad")
        assert q.micro_versions_replayed == 0
        head = writer.head()["micro_lora_version_id"]
        assert writer.flush() == 0
        assert writer.head()["micro_lora_version_id"] == head
        other.release(q.quarantine_id)
        assert other.flush() == 6
        assert writer.flush() == 0
    finally:
        writer.close()
        other.close()


def table_counts(store: SonaStore) -> dict:
    with store.engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in (
                "trajectories",
                "cycles",
                "audit_log",
                "lora_versions",
                "quarantines",
                "quarantined_trajectories",
                "micro_lora_signals",
                "micro_lora_replays",
            )
        }


def test_a_cycle_rolled_back_earlier_with_quarantined_trajectories_stays_rolled_back(stores):
    """The bad batch's cycle was rolled back (not requeued) before the
    quarantine: nothing to roll back, and restoring that cycle is refused
    until the quarantine is released."""
    a, _ = stores
    a.record_trajectories(good(1))
    a.run_cycle(force=True)
    bad_ids = a.record_trajectories(bad())
    poisoned = a.run_cycle(force=True)
    a.rollback(poisoned.cycle_id, reason="bad cycle")
    q = a.quarantine(bad_ids, reason="and its batch")
    assert q.cycles_rolled_back == [] and q.base_lora_distance == 0.0
    assert q.micro_versions_written == 0 and q.micro_lora_distance > 0
    with pytest.raises(
        RollbackError, match=f"cycle {poisoned.cycle_id} learned from 8 quarantined"
    ):
        a.restore(poisoned.cycle_id)
    released = a.release(q.quarantine_id)
    assert released.pending_again == 0  # still the rolled-back cycle's, as before
    a.restore(poisoned.cycle_id)
    assert a.head()["cycle_id"] == poisoned.cycle_id


def test_part_of_a_flush_is_replayed_as_the_rest_alone(stores):
    """Quarantining every other trajectory of one flush: the replayed version
    applies the other six in runs of the flush threshold (4, then 2), as a
    store that recorded only those six applies them (a group, then a flush)."""
    a, control = stores
    items = good(5)
    ids = a.record_trajectories(items)
    result = a.quarantine(ids[::2], reason="every other one")
    assert (result.micro_versions_replayed, result.micro_versions_written) == (1, 1)
    control.record_trajectories(items[1::2])
    assert control.flush() == 2
    assert np.array_equal(a.lora_state(tier="micro").up, control.lora_state(tier="micro").up)


def test_an_imported_micro_lora_is_a_reset_the_replay_never_crosses(stores, tmp_path):
    """Signals applied before a micro-LoRA import are not in the imported
    weights: quarantining them replays nothing; after the import, from it."""
    pytest.importorskip("safetensors")

    a, _ = stores
    early = a.record_trajectories(bad(4))
    a.export_lora(tmp_path / "micro", tier="micro")
    a.record_trajectories(good(1))
    imported = a.import_lora(tmp_path / "micro", reason="known good", tier="micro").to_version_id
    before = a.lora_state(tier="micro").up.copy()
    result = a.quarantine(early, reason="before the import")
    assert result.micro_versions_replayed == 0 and result.micro_signals_removed == 0
    assert np.array_equal(a.lora_state(tier="micro").up, before)

    late = a.record_trajectories(bad(4))
    result = a.quarantine(late, reason="after the import")
    assert (result.micro_versions_replayed, result.micro_versions_written) == (1, 0)
    assert a.head()["micro_lora_version_id"] == imported
