"""The migration that gives `cycles` its `attempts` and `last_attempt_at`:
a populated store at the previous revision upgrades with every row kept (each
an attempt of its own), keeps working, and the new columns go away on the way
down with nothing else touched."""

from __future__ import annotations

import datetime as dt
import importlib.util
from types import ModuleType

import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.db import schema
from sona_store.db.engine import create_store_engine
from sona_store.db.types import UtcDateTime, utcnow
from sona_store.services.scheduling import run_scheduled_cycle

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=3, min_trajectories=10)
INTERVAL = dt.timedelta(milliseconds=1)
EARLY = dt.timedelta(hours=1)
TABLES = ("cycles", "trajectories", "trajectory_steps", "patterns", "lora_versions", "audit_log")
COLUMNS = (
    "id, parent_cycle_id, trigger, status, reason, started_at, finished_at, "
    "trajectories_processed, patterns_extracted, scheduled_for, base_lora_version_id"
)


def _migration() -> ModuleType:
    (path,) = (schema.migrations_dir() / "versions").glob("*_coalesced_skips.py")
    spec = importlib.util.spec_from_file_location("coalesced_skips", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(engine: sa.Engine) -> tuple[dict[str, int], list[tuple]]:
    with engine.connect() as conn:
        counts = {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES
        }
        rows = conn.execute(sa.text(f"SELECT {COLUMNS} FROM cycles ORDER BY id")).all()
    return counts, [tuple(r) for r in rows]


def _columns(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns("cycles")}


def _populate(url: str) -> None:
    """Cycles of every kind: completed, rolled back, a forced and a scheduled skip."""
    with SonaStore(url, CONFIG) as store:
        for seed in (1, 2):
            store.record_trajectories(make_trajectories(12, 8, seed=seed))
            store.run_cycle(force=True)
        store.rollback(2, reason="bad")
        store.run_cycle(force=True)
        store.record_trajectories(make_trajectories(3, 8, seed=3))
        run_scheduled_cycle(store.engine, store.config, INTERVAL, early=EARLY)


# What the previous revision's code wrote for the next idle tick: a row of its own.
OLD_CODE_TICK = sa.text(
    "INSERT INTO cycles (parent_cycle_id, trigger, status, reason, started_at, finished_at,"
    " elapsed_seconds, trajectories_processed, window_size, patterns_extracted, ewc_updated,"
    " config, actor, scheduled_for, base_lora_version_id, ewc_state_id)"
    " SELECT parent_cycle_id, trigger, status, reason, :at, :at, elapsed_seconds, 0, 0, 0,"
    " ewc_updated, config, actor, :at, base_lora_version_id, ewc_state_id"
    " FROM cycles WHERE id = (SELECT max(id) FROM cycles)"
).bindparams(sa.bindparam("at", type_=UtcDateTime()))


def test_upgrade_from_the_previous_revision_keeps_every_row(db_url):
    previous = _migration().down_revision
    _populate(db_url)
    engine = create_store_engine(db_url)
    try:
        before = _snapshot(engine)
        schema.downgrade(engine, previous)
        assert schema.database_revision(engine) == previous
        assert not {"attempts", "last_attempt_at"} & _columns(engine)
        assert _snapshot(engine) == before  # down: nothing but the two columns goes
        with engine.begin() as conn:
            conn.execute(OLD_CODE_TICK, {"at": utcnow()})
        counts, rows = _snapshot(engine)
        assert counts["cycles"] == 5 and counts["audit_log"] == 1
        assert [r[2:4] for r in rows[-2:]] == [("scheduled", "skipped")] * 2

        schema.upgrade(engine)
        assert schema.database_revision(engine) == schema.head_revision()
        assert _snapshot(engine) == (counts, rows)
        with engine.connect() as conn:
            added = conn.execute(sa.text("SELECT attempts, last_attempt_at FROM cycles")).all()
        assert added == [(1, None)] * counts["cycles"]
    finally:
        engine.dispose()
    with SonaStore(db_url, CONFIG, create=False) as store:  # and the store works on
        record = store.history(limit=1)[0]
        assert (record.trigger, record.status, record.attempts) == ("scheduled", "skipped", 1)
        tick = run_scheduled_cycle(store.engine, store.config, INTERVAL, early=EARLY)
        assert tick.result.cycle_id == record.cycle_id and tick.result.attempts == 2
        store.record_trajectories(make_trajectories(12, 8, seed=4))
        assert store.run_cycle().status == "completed"
