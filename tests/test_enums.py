"""One set of enums for the states a store records: the models' CHECK
constraints are made from them (and stay what the migrations created), the API
refuses a value outside them before writing anything, and results still
compare equal to the plain strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store.db.models import Base
from sona_store.enums import CycleStatus, CycleTrigger, LoraTier, sql_in
from sona_store.errors import ValidationError

from .helpers import make_trajectories

MIGRATIONS = Path(__file__).parent.parent / "migrations" / "versions"


def model_checks() -> dict[str, str]:
    return {
        str(c.name): str(c.sqltext)
        for table in Base.metadata.tables.values()
        for c in table.constraints
        if isinstance(c, sa.CheckConstraint)
    }


def test_state_constraints_are_the_text_the_first_migration_wrote():
    """The schema drift test does not compare CHECK constraints, so their text
    is compared here: the same enum order and values as migration 0001."""
    checks = model_checks()
    initial = (MIGRATIONS / "0001_initial.py").read_text()
    for name, column, states in (
        ("ck_cycles_status", "status", CycleStatus),
        ("ck_cycles_trigger", "trigger", CycleTrigger),
        ("ck_lora_versions_tier", "tier", LoraTier),
    ):
        assert checks[name] == sql_in(column, states)
        assert f'"{sql_in(column, states)}"' in initial, name
    assert checks["ck_cycles_status"] == (
        "status IN ('completed', 'skipped', 'failed', 'rolled_back')"
    )


def test_the_database_enforces_the_same_states(db_url, store):
    """What the migrations created refuses a status outside the enum, on each backend."""
    store.record_trajectories(make_trajectories(20, store.config.embedding_dim))
    done = store.run_cycle(force=True)
    assert done.status == CycleStatus.COMPLETED and done.status == "completed"
    assert done.trigger == CycleTrigger.FORCED
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE cycles SET status = 'paused' WHERE id = :id"), {"id": done.cycle_id}
        )
    assert store.cycle(done.cycle_id).status == "completed"


def test_lora_state_takes_a_tier_and_refuses_an_unknown_one(store):
    micro = store.lora_state(tier="micro")
    assert micro.tier == LoraTier.MICRO
    assert np.array_equal(store.lora_state(tier=LoraTier.MICRO).up, micro.up)
    assert store.lora_state().tier == "base"
    with pytest.raises(ValidationError, match="unknown tier 'nano': one of 'base', 'micro'") as e:
        store.lora_state(tier="nano")
    assert e.value.field == "tier"


def test_an_unknown_trigger_or_status_is_refused_and_nothing_written(store):
    store.record_trajectories(make_trajectories(20, store.config.embedding_dim))
    with pytest.raises(ValidationError, match="unknown trigger 'cron'"):
        store.run_cycle(force=True, trigger="cron")
    assert store.history() == []
    with pytest.raises(ValueError, match="unknown status 'done'"):
        store.history(status="done")
    store.run_cycle(force=True, trigger=CycleTrigger.MANUAL)
    [record] = store.history(status=[CycleStatus.COMPLETED, "skipped"])
    assert record.trigger == "manual"
