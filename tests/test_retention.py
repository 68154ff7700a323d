"""Retention (sona_store/services/retention.py, db/retention.py): which vectors gc
deletes and which it keeps, the audit row, the archive and what brings it
back, the stored policy, rollback past the horizon, the scheduled service,
the command line and SQLite's free pages. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import shlex
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import Policy, SonaConfig, SonaStore, ValidationError, VectorsDroppedError
from sona_store.cli.main import main
from sona_store.scheduler.service import SonaScheduler

from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3, retention_window=15, min_trajectories=5)
BATCH = 10


def vectors(store: SonaStore, ids: list[int] | None = None) -> dict[int, tuple]:
    """trajectory id -> (query bytes, [(step, activations, attention, reward, layer)])."""
    with store.engine.connect() as c:
        queries = dict(
            c.execute(
                sa.text("SELECT trajectory_id, query_embedding FROM trajectory_vectors")
            ).all()
        )
        steps: dict[int, list] = {}
        for row in c.execute(
            sa.text(
                "SELECT trajectory_id, step_index, activations, attention_weights, reward,"
                " layer_name FROM trajectory_steps ORDER BY trajectory_id, step_index"
            )
        ):
            steps.setdefault(row[0], []).append(
                (row[1], bytes(row[2]), bytes(row[3]), row[4], row[5])
            )
    out = {i: (bytes(q), steps.get(i, [])) for i, q in queries.items()}
    return out if ids is None else {i: out[i] for i in ids if i in out}


def metadata(store: SonaStore) -> list[tuple]:
    with store.engine.connect() as c:
        return c.execute(
            sa.text(
                "SELECT id, quality, latency_us, model_route, context_ids, created_at,"
                " consumed_by_cycle_id FROM trajectories ORDER BY id"
            )
        ).all()


def consumed_by(store: SonaStore, cycle_id: int) -> list[int]:
    with store.engine.connect() as c:
        return list(
            c.scalars(
                sa.text("SELECT id FROM trajectories WHERE consumed_by_cycle_id = :c ORDER BY id"),
                {"c": cycle_id},
            )
        )


def build(store: SonaStore, cycles: int = 5, *, pending: int = 3) -> None:
    """`cycles` completed cycles of BATCH trajectories each (ids 1.. in order),
    signals applied, then `pending` trajectories left pending."""
    for seed in range(cycles):
        items = make_trajectories(BATCH, DIM, seed=seed, steps=1 + seed % 2)
        items[0]["model_route"] = f"route-{seed}"
        items[0]["context_ids"] = ["a", "b"]
        items[0]["latency_us"] = 1000 + seed
        items[0]["steps"][0]["layer_name"] = "L0"
        store.record_trajectories(items)
        assert store.run_cycle(force=True).status == "completed"
    if pending:
        store.record_trajectories(make_trajectories(pending, DIM, seed=99))
    store.flush()


@pytest.fixture
def store(db_url):
    opened = SonaStore(db_url, CONFIG, actor="tester")
    yield opened
    opened.close()


def test_gc_keeps_the_window_the_horizon_and_pending_and_audits(store, tmp_path):
    build(store)  # cycles 1..5 consumed ids 1-10, 11-20, ..., 41-50; 51-53 pending
    before_meta = metadata(store)
    before = vectors(store)
    result = store.gc(older_than=0, horizon_cycles=2, archive=tmp_path)
    # Horizon 2: cycles 4 and 5 keep theirs (31-50); the window after rolling
    # both back is the 15 newest of cycles 1-3 (16-30). Pending 51-53 stay.
    kept = list(range(16, 54))
    assert sorted(vectors(store)) == kept
    assert result.trajectories == 15 and (result.first_id, result.last_id) == (1, 15)
    assert result.steps == sum(len(before[i][1]) for i in range(1, 16))
    assert metadata(store) == before_meta  # every metadata row, unchanged
    with store.engine.connect() as c:
        dropped = c.execute(
            sa.text("SELECT id FROM trajectories WHERE vectors_dropped_at IS NOT NULL")
        ).scalars()
        assert list(dropped) == list(range(1, 16))
    event = store.audit_log()[0]
    assert event["id"] == result.audit_id and event["action"] == "gc"
    details = event["details"]
    assert (details["trajectories"], details["first_id"], details["last_id"]) == (15, 1, 15)
    assert details["archive"] == result.archive and Path(result.archive).is_file()
    assert details["policy"] == {"max_age_seconds": 0.0, "horizon_cycles": 2}
    assert "rollback horizon of 2 cycles" in event["reason"]
    assert store.stats()["trajectories_vectors_dropped"] == 15
    # Nothing more to delete: no second audit row.
    again = store.gc(older_than=0, horizon_cycles=2)
    assert again.trajectories == 0 and again.audit_id is None
    assert len(store.audit_log()) == 1


def test_without_a_policy_gc_deletes_nothing(store):
    build(store, 3)
    result = store.gc()
    assert (result.trajectories, result.audit_id) == (0, None)
    assert not result.policy.deletes_anything
    assert len(vectors(store)) == 33 and store.audit_log() == []


def test_age_limit_spares_younger_trajectories(store):
    build(store, 4, pending=0)
    old = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    with store.engine.begin() as c:  # ids 1-5 recorded long ago
        c.execute(
            sa.update(sa.table("trajectories", sa.column("id"), sa.column("created_at")))
            .where(sa.column("id") <= 5)
            .values(created_at=old.replace(tzinfo=None) if c.dialect.name == "sqlite" else old)
        )
    result = store.gc(older_than=dt.timedelta(days=30))
    assert result.trajectories == 5 and (result.first_id, result.last_id) == (1, 5)
    assert sorted(vectors(store)) == list(range(6, 41))
    assert result.policy.horizon_cycles is None


def test_unapplied_micro_signals_keep_their_vectors(db_url):
    config = SonaConfig(
        hidden_dim=DIM, pattern_clusters=3, retention_window=5, micro_flush_threshold=1000
    )
    store = SonaStore(db_url, config)
    try:
        store.record_trajectories(make_trajectories(20, DIM, seed=1))
        store.run_cycle(force=True)
        store.record_trajectories(make_trajectories(20, DIM, seed=2))
        store.run_cycle(force=True)
        assert store.gc(older_than=0).trajectories == 0  # no signal applied yet
        store.flush()
        assert store.gc(older_than=0).trajectories == 35  # all but the window
    finally:
        store.close()


def test_rollback_with_requeue_past_the_horizon_fails_naming_the_policy(store):
    build(store)
    store.set_retention_policy(older_than=0, horizon_cycles=2)
    store.gc()
    head_before = store.head()
    for cycle in (1, 2):  # 3's batch (21-30) is in the window kept under the horizon
        with pytest.raises(VectorsDroppedError) as raised:
            store.rollback(cycle, requeue=True)
        message = str(raised.value)
        assert "older than 0 days, beyond a rollback horizon of 2 cycles" in message
        assert "--requeue" in message
    assert store.head() == head_before  # nothing written
    assert [e["action"] for e in store.audit_log()] == ["gc", "set_retention"]
    # Within the horizon it works, and the next cycle reads a full window.
    move = store.rollback(4, requeue=True, reason="within the horizon")
    assert move.trajectories_requeued == 2 * BATCH
    result = store.run_cycle(force=True)
    assert result.trajectories_processed == 2 * BATCH + 3
    assert result.window_size == CONFIG.retention_window


def test_quarantine_past_the_horizon_fails_naming_the_policy(store):
    """A quarantine requeues the cycles it cuts: past the horizon their vectors
    are gone, so it is refused like `rollback --requeue`, and writes nothing."""
    build(store)
    store.set_retention_policy(older_than=0, horizon_cycles=2)
    store.gc()
    head_before, audit_before = store.head(), store.audit_log()
    with pytest.raises(VectorsDroppedError) as raised:
        store.quarantine(ids=range(11, 21), reason="cycle 2's batch, past the horizon")
    message = str(raised.value)
    assert "older than 0 days, beyond a rollback horizon of 2 cycles" in message
    assert "cycle(s) 2, 3, 4, 5" in message and "ingest --restore" in message
    assert store.head() == head_before and store.audit_log() == audit_before
    assert store.stats()["trajectories_quarantined"] == 0
    # Within the horizon the cycles' vectors are there, but build() applied every
    # signal in one micro-LoRA flush, whose replay needs ids 1-15 gc deleted.
    with pytest.raises(VectorsDroppedError) as raised:
        store.quarantine(ids=range(31, 41), reason="cycle 4's batch, within the horizon")
    assert "cannot replay the micro-LoRA" in str(raised.value)
    assert "15 of the 43 trajectories" in str(raised.value)
    assert store.head() == head_before and store.audit_log() == audit_before
    # A batch recorded and flushed after the gc replays without them.
    store.record_trajectories(make_trajectories(BATCH, DIM, seed=7))
    store.flush()
    result = store.quarantine(ids=range(54, 64), reason="a batch after the gc")
    assert result.trajectories == BATCH and result.cycles_rolled_back == []
    assert result.micro_versions_replayed == 1


def test_rollback_without_requeue_past_the_horizon_works(store):
    build(store)
    store.gc(older_than=0, horizon_cycles=1)
    move = store.rollback(2, reason="no vectors needed")
    assert move.cycles_rolled_back == [2, 3, 4, 5]
    # The next cycle's window holds only trajectories that still have vectors.
    result = store.run_cycle(force=True)
    assert result.status == "completed" and result.trajectories_processed == 3
    assert result.window_size == 3  # cycle 1's trajectories have no vectors left


def _twin(url: str) -> SonaStore:
    store = SonaStore(url, CONFIG)
    build(store)
    return store


def test_within_the_horizon_gc_changes_nothing_a_cycle_learns(db_url, tmp_path):
    """Roll back the whole horizon with requeue and run a cycle: a store gc
    ran on learns exactly what an untouched one learns."""
    other = _twin(f"sqlite:///{tmp_path / 'untouched.db'}")
    store = _twin(db_url)
    try:
        assert store.gc(older_than=0, horizon_cycles=2).trajectories > 0
        for s in (store, other):
            s.rollback(4, requeue=True)
            s.run_cycle(force=True)
        mine, theirs = store.patterns(), other.patterns()
        assert [p.cluster_size for p in mine] == [p.cluster_size for p in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert np.array_equal(a.centroid, b.centroid)
    finally:
        store.close()
        other.close()


def read_archive(path: str) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_archive_restores_in_place_and_requeue_works_again(store, tmp_path):
    build(store)
    before = vectors(store)
    result = store.gc(older_than=0, horizon_cycles=1, archive=tmp_path / "arch")
    lines = read_archive(result.archive)
    assert [line["id"] for line in lines] == list(range(result.first_id, result.last_id + 1))
    assert "id" in lines[0] and "created_at" not in lines[0]
    with pytest.raises(VectorsDroppedError):
        store.rollback(2, requeue=True)
    with gzip.open(result.archive, "rt", encoding="utf-8") as f:
        assert store.restore_vectors(f) == result.trajectories
    assert vectors(store) == before  # bit for bit
    assert store.stats()["trajectories_vectors_dropped"] == 0
    assert store.audit_log()[0]["action"] == "restore_vectors"
    assert store.rollback(2, requeue=True).trajectories_requeued == 4 * BATCH


def test_restore_refuses_what_does_not_fit_and_writes_nothing(store, tmp_path):
    build(store)
    result = store.gc(older_than=0, horizon_cycles=1, archive=tmp_path)
    lines = [json.dumps(item) for item in read_archive(result.archive)]
    kept = vectors(store)
    bad_cases = {
        "another quality": lambda items: items[3].update(quality=0.123456),
        "not in this store": lambda items: items[2].update(id=10**6),
        "needs the trajectory's id": lambda items: items[1].pop("id"),
        "positive integer": lambda items: items[1].update(id=True),
    }
    for needle, spoil in bad_cases.items():
        items = [json.loads(line) for line in lines]
        spoil(items)
        with pytest.raises(ValidationError, match=needle):
            store.restore_vectors(json.dumps(item) for item in items)
        assert vectors(store) == kept
    store.restore_vectors(lines)
    with pytest.raises(ValidationError, match="still has its vectors"):
        store.restore_vectors(lines)


def test_archive_ingests_into_a_fresh_store_bit_for_bit(store, tmp_path, capsys):
    build(store)
    before = vectors(store)
    result = store.gc(older_than=0, horizon_cycles=1, archive=tmp_path)
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    SonaStore(fresh_url, CONFIG).close()
    assert main(["--url", fresh_url, "ingest", result.archive]) == 0  # a .gz file
    assert f"recorded {result.trajectories} trajectories" in capsys.readouterr().out
    fresh = SonaStore(fresh_url)
    try:
        got = vectors(fresh)
        # New ids in the same order; the archive's ids are not reused.
        assert len(got) == result.trajectories
        originals = range(result.first_id, result.last_id + 1)
        assert [got[i] for i in sorted(got)] == [before[i] for i in originals]
        assert fresh.pending_count() == result.trajectories
    finally:
        fresh.close()


def test_policy_is_stored_audited_and_validated(store):
    assert store.retention_policy() == Policy()
    audit = store.set_retention_policy(
        older_than=dt.timedelta(days=7), horizon_cycles=24, archive_dir="/archive", reason="prod"
    )
    assert store.retention_policy() == Policy(7 * 86400.0, 24, "/archive")
    event = store.audit_log()[0]
    assert (event["id"], event["action"], event["reason"]) == (audit, "set_retention", "prod")
    assert event["details"]["to"]["horizon_cycles"] == 24
    bad_values = (
        {"older_than": -1},
        {"older_than": float("nan")},
        {"older_than": float("inf")},
        {"horizon_cycles": -2},
        {"horizon_cycles": 1.5},
    )
    for bad in bad_values:
        with pytest.raises(ValueError):
            store.set_retention_policy(**bad)
    assert store.retention_policy().horizon_cycles == 24  # nothing written
    store.set_retention_policy()
    assert store.retention_policy() == Policy()
    assert [e["action"] for e in store.audit_log()] == ["set_retention", "set_retention"]


def test_gc_arguments_override_the_stored_policy(store):
    build(store)
    store.set_retention_policy(horizon_cycles=4)
    assert store.gc().trajectories == 0  # window + 4 cycles cover everything
    assert store.gc(horizon_cycles=1).trajectories == 4 * BATCH - CONFIG.retention_window


def test_scheduled_service_applies_the_policy_after_a_cycle(store, tmp_path):
    build(store, 3)
    store.set_retention_policy(older_than=0, horizon_cycles=1, archive_dir=str(tmp_path))
    store.record_trajectories(make_trajectories(BATCH, DIM, seed=7))
    store.flush()
    scheduler = SonaScheduler(store, interval=3600)
    report = scheduler.run_once()
    assert report.status == "ran" and report.run.result.status == "completed"
    event = store.audit_log()[0]
    assert event["action"] == "gc" and event["actor"] == "tester"
    # Horizon 1: the new cycle's batch (its 13) and the window under it stay.
    assert event["details"]["trajectories"] == 3 * BATCH - CONFIG.retention_window
    assert len(list(tmp_path.glob("sona-gc-*.jsonl.gz"))) == 1


def test_cli_gc_retention_and_restore(db_url, tmp_path, capsys):
    SonaStore(db_url, CONFIG).close()
    s = SonaStore(db_url)
    build(s)
    before = vectors(s)
    s.close()
    url = ["--url", db_url]
    assert main([*url, "retention", "set", "--older-than-days", "0", "--horizon-cycles", "1"]) == 0
    assert "beyond a rollback horizon of 1 cycle" in capsys.readouterr().out
    assert main([*url, "gc"]) == 1  # stdin is not a terminal: refuses without --yes
    assert "--yes" in capsys.readouterr().err
    archive = tmp_path / "archive"
    assert main([*url, "gc", "--archive", str(archive), "--yes", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trajectories"] == 4 * BATCH - CONFIG.retention_window
    assert result["policy"]["horizon_cycles"] == 1
    code = main([*url, "rollback", "2", "--requeue", "--yes"])
    assert code == 1 and "horizon of 1 cycle" in capsys.readouterr().err
    assert main([*url, "ingest", "--restore", result["archive"]]) == 0
    assert f"restored the vectors of {result['trajectories']}" in capsys.readouterr().out
    s = SonaStore(db_url)
    try:
        assert vectors(s) == before
    finally:
        s.close()
    assert main([*url, "retention", "clear"]) == 0
    capsys.readouterr()
    assert main([*url, "retention", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"max_age_seconds": None, "horizon_cycles": None, "archive_dir": None}
    assert main([*url, "gc", "--yes"]) == 0
    assert "nothing to delete" in capsys.readouterr().out


WIDE = SonaConfig(hidden_dim=64, pattern_clusters=3, retention_window=50)


def fill(store: SonaStore) -> None:
    """8 cycles of 100 trajectories of 64 dims: pages' worth of vectors."""
    for seed in range(8):
        store.record_trajectories(make_trajectories(100, 64, seed=seed))
        store.run_cycle(force=True)
    store.flush()


def test_new_sqlite_files_give_pages_back(tmp_path):
    path = tmp_path / "s.db"
    store = SonaStore(f"sqlite:///{path}", WIDE)
    try:
        with store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
        fill(store)
        with store.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").all()
        size = path.stat().st_size
        result = store.gc(older_than=0, horizon_cycles=1)
        assert result.trajectories == 700 - 50
        assert result.pages_reclaimed > 0
        assert result.bytes_reclaimed == result.pages_reclaimed * 16384
        with store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        assert path.stat().st_size <= size - result.bytes_reclaimed
    finally:
        store.close()


def test_db_vacuum_converts_an_older_file(tmp_path, capsys):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)  # a file made before incremental auto-vacuum
    raw.execute("PRAGMA page_size = 16384")
    raw.execute("PRAGMA auto_vacuum = NONE")
    raw.execute("CREATE TABLE filler (x BLOB)")
    raw.commit()
    raw.close()
    url = f"sqlite:///{path}"
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE filler")
    raw.commit()
    raw.close()
    store = SonaStore(url, WIDE)
    try:
        fill(store)
        assert store.gc(older_than=0, horizon_cycles=1).pages_reclaimed == 0
        with store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 0
            free = c.exec_driver_sql("PRAGMA freelist_count").scalar()
        assert free > 0
    finally:
        store.close()
    assert main(["--url", url, "db", "vacuum"]) == 0
    before, after = map(int, re.search(r"(\d+) -> (\d+) bytes", capsys.readouterr().out).groups())
    assert after < before
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert raw.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        raw.close()


def test_db_vacuum_runs_on_postgresql(db_url, capsys):
    if not db_url.startswith("postgresql"):
        pytest.skip("the PostgreSQL path")
    store = SonaStore(db_url, CONFIG)
    build(store, 3)
    store.gc(older_than=0, horizon_cycles=1)
    store.close()
    assert main(["--url", db_url, "db", "vacuum"]) == 0
    assert " -> " in capsys.readouterr().out


def test_the_commands_of_docs_operations_run(tmp_path, capsys):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    lines = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", doc, flags=re.S)
        for line in block.splitlines()
        if line.startswith("sona-store ")
    ]
    assert any(" gc " in f"{line} " for line in lines) and any("db vacuum" in x for x in lines)
    url = f"sqlite:///{tmp_path / 'sona.db'}"
    store = SonaStore(url, CONFIG)
    build(store)
    store.close()
    for line in lines:
        args = shlex.split(line.replace("/var/lib/sona/archive", str(tmp_path / "a")))[1:]
        args = [a.replace("DIR", str(tmp_path / "b")) for a in args]
        if "--url" not in args:
            args = ["--url", url, *args]
        else:
            args[args.index("--url") + 1] = url
        assert main(args) == 0, line
    with SonaStore(url) as opened:
        assert any(e["action"] == "gc" for e in opened.audit_log())


def test_a_failing_gc_in_the_service_leaves_the_cycle_standing(store, tmp_path, caplog):
    build(store, 3)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store.set_retention_policy(older_than=0, horizon_cycles=1, archive_dir=str(blocker))
    store.record_trajectories(make_trajectories(BATCH, DIM, seed=7))
    store.flush()
    with caplog.at_level("ERROR", logger="sona_store.scheduler"):
        report = SonaScheduler(store, interval=3600).run_once()
    assert report.status == "ran" and report.run.result.status == "completed"
    assert "gc after the cycle failed" in caplog.text
    assert store.history()[0].status == "completed"
    assert store.stats()["trajectories_vectors_dropped"] == 0  # nothing deleted
    assert [e["action"] for e in store.audit_log()] == ["set_retention"]


@pytest.mark.parametrize("failing", ["drop_vectors", "add_audit"])
def test_a_gc_that_fails_keeps_every_vector_and_leaves_no_archive(
    store, tmp_path, monkeypatch, failing
):
    """Before the archive is complete (deleting) or after (the audit row):
    the transaction rolls back and the archive file goes with it."""
    import sona_store.services.retention as retention

    build(store)
    before = vectors(store)

    def broken(*_args, **_kwargs):
        raise RuntimeError("injected failure")

    target = retention.db if failing == "drop_vectors" else retention.cycles
    monkeypatch.setattr(target, failing, broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        store.gc(older_than=0, horizon_cycles=1, archive=tmp_path / "arch")
    assert vectors(store) == before
    assert list((tmp_path / "arch").iterdir()) == []
    assert store.audit_log() == []
