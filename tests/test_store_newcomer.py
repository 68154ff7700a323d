"""The library side of issue 16: SonaStore() finds $SONA_STORE_URL, a pattern's
repr fits on a line, and a query of the wrong size is refused at begin."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.engine import make_url

from sona_store import SonaConfig, SonaStore, ValidationError
from sona_store.errors import SchemaVersionError

from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3)


def test_sona_store_without_a_url_opens_sona_store_url(db_url, monkeypatch, tmp_path):
    with SonaStore(db_url, CONFIG) as store:
        store.record_trajectories(make_trajectories(5, DIM))
    monkeypatch.setenv("SONA_STORE_URL", db_url)
    monkeypatch.chdir(tmp_path)
    with SonaStore() as store:
        assert store.stats()["trajectories_recorded"] == 5
        assert store.engine.url.database == make_url(db_url).database
    assert not (tmp_path / "sona.db").exists()


def test_without_create_a_missing_sqlite_file_is_an_error_and_stays_missing(tmp_path):
    path = tmp_path / "typo.db"
    with pytest.raises(SchemaVersionError, match="does not exist.*db upgrade"):
        SonaStore(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_a_pattern_repr_does_not_print_its_centroid(db_url):
    with SonaStore(db_url, SonaConfig(hidden_dim=256, pattern_clusters=3)) as store:
        store.record_trajectories(make_trajectories(12, 256))
        store.run_cycle(force=True)
        (pattern, *_) = store.find_patterns(np.ones(256, dtype=np.float32), k=1)
    text = repr(pattern)
    assert len(text) < 200, text
    assert "<256 floats>" in text and f"id={pattern.id}" in text


@pytest.mark.parametrize(
    "query", [np.zeros(384), [0.0] * (DIM - 1), [float("nan")] * DIM], ids=["384", "7", "nan"]
)
def test_begin_trajectory_checks_the_query_at_once(db_url, query):
    with SonaStore(db_url, CONFIG) as store:
        with pytest.raises(ValidationError, match="query_embedding"):
            store.begin_trajectory(query)
        t = store.begin_trajectory(np.zeros(DIM))  # the right size is accepted
        t.add_step(np.ones(DIM), [1.0], 0.5)
        assert store.end_trajectory(t, 0.5) is not None
