"""A store whose configuration was written before issue 18 (it holds
trajectory_capacity, since removed) still opens, learns and reports its settings.
tests/data/config_before_issue18.json is what the previous SonaConfig.to_dict()
wrote for SonaConfig.edge_deployment(hidden_dim=8, pattern_clusters=3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import ConfigError, SonaConfig, SonaStore
from sona_store.db.engine import create_store_engine
from sona_store.db.models import Cycle, StoreSettings

from .conftest import DATA
from .helpers import make_trajectories

OLD = json.loads((DATA / "config_before_issue18.json").read_text())


def _write_old_config(url: str) -> None:
    """Put the previous version's stored dicts where it wrote them: the settings row
    and every cycle record."""
    engine = create_store_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.update(StoreSettings).values(config=OLD))
            connection.execute(sa.update(Cycle).values(config=OLD))
    finally:
        engine.dispose()


def test_store_with_a_removed_field_opens_and_learns(db_url):
    config = SonaConfig.edge_deployment(hidden_dim=8, pattern_clusters=3)
    store = SonaStore(db_url, config)
    try:
        store.record_trajectories(make_trajectories(12, 8, seed=1))
        first = store.run_cycle(force=True)
    finally:
        store.close()
    _write_old_config(db_url)
    assert "trajectory_capacity" in OLD
    store = SonaStore(db_url)  # its own configuration, as stored
    try:
        assert store.config == config
        assert store.history()[-1].config == OLD
        store.record_trajectories(make_trajectories(12, 8, seed=2))
        second = store.run_cycle(force=True)
        assert second.status == "completed" and second.cycle_id != first.cycle_id
        assert np.isfinite(store.apply_base_lora(0, np.ones(8, np.float32))).all()
        store.rollback(second.cycle_id, reason="test")
        assert store.head()["cycle_id"] == first.cycle_id
    finally:
        store.close()


def test_removed_fields_are_dropped_unknown_ones_refused():
    assert SonaConfig.from_dict(OLD) == SonaConfig.edge_deployment(hidden_dim=8, pattern_clusters=3)
    assert "trajectory_capacity" not in SonaConfig().to_dict()
    with pytest.raises(ConfigError, match="colour"):
        SonaConfig.from_dict({**OLD, "colour": "blue"})
    with pytest.raises(TypeError):
        SonaConfig(trajectory_capacity=10)  # type: ignore[call-arg]
