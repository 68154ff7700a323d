"""The head cache keeps each value under the pointer it was built from: a
micro-LoRA flush (which moves only the micro pointer) leaves the pattern
index in place, and a prune by another store, which moves no pointer, is
still seen."""

from __future__ import annotations

import numpy as np

from sona_store import SonaConfig, SonaStore
from sona_store.services.pattern_index import PatternIndex

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=4, micro_flush_threshold=4)


def counting_builds(monkeypatch) -> list[int]:
    """Patch the store's pattern index builder to count the builds."""
    builds: list[int] = []

    class Counted(PatternIndex):
        def __init__(self, *args, **kwargs):
            builds.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("sona_store.store.PatternIndex", Counted)
    return builds


def test_record_and_query_rounds_build_the_pattern_index_once(db_url, monkeypatch):
    with SonaStore(db_url, CONFIG, head_refresh_seconds=0) as store:
        store.record_trajectories(make_trajectories(40, CONFIG.embedding_dim, seed=1))
        store.run_cycle(force=True)
        builds = counting_builds(monkeypatch)
        query = np.ones(CONFIG.embedding_dim, dtype=np.float32)
        first = store.find_patterns(query, k=3)
        micro_before = store.head()["micro_lora_version_id"]
        for round_ in range(10):
            store.record_trajectories(make_trajectories(4, CONFIG.embedding_dim, seed=10 + round_))
            assert [p.id for p in store.find_patterns(query, k=3)] == [p.id for p in first]
            store.apply_micro_lora(np.ones(CONFIG.hidden_dim, dtype=np.float32))
        # The micro pointer moved (flushes happened), the patterns did not.
        assert store.head()["micro_lora_version_id"] != micro_before
        assert len(builds) == 1
        # A cycle moves the head cycle: the index is built again.
        store.run_cycle(force=True)
        store.find_patterns(query, k=3)
        assert len(builds) == 2


def test_a_prune_by_another_store_is_seen_by_the_next_query(db_url):
    with SonaStore(db_url, CONFIG, head_refresh_seconds=0) as reader:
        reader.record_trajectories(make_trajectories(40, CONFIG.embedding_dim, seed=2))
        reader.run_cycle(force=True)
        query = np.ones(CONFIG.embedding_dim, dtype=np.float32)
        assert reader.find_patterns(query, k=10)
        reader.flush()  # the accesses are written: the pruner sees them
        with SonaStore(db_url) as pruner:
            pruned = pruner.prune_patterns(min_quality=2.0, min_accesses=10**9, max_age_seconds=0)
        assert pruned == len(reader.patterns(reader.head()["cycle_id"]))
        assert reader.find_patterns(query, k=10) == []
        assert reader.recommend_routes(query, k=3) == []
