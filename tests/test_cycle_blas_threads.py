"""The cycle runs its math on CYCLE_BLAS_THREADS BLAS threads and gives the
process its own setting back afterwards, also when the cycle fails; seen
through threadpoolctl's introspection of the loaded BLAS libraries."""

from __future__ import annotations

import threading

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from sona_store import SonaConfig, SonaStore
from sona_store.services import cycle as cycle_module
from sona_store.services.cycle import CycleFailedError, blas_threads

from .helpers import make_trajectories

CONFIG = SonaConfig(hidden_dim=8, pattern_clusters=4)
OUTSIDE = 2  # the setting outside the cycle, set by each test (any value but the cycle's)


def _blas_threads() -> list[int]:
    threads = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    if not threads:
        pytest.skip("no BLAS library loaded that threadpoolctl can see")
    return threads


def _watch(monkeypatch: pytest.MonkeyPatch, seen: dict[str, list[int]], fail: bool = False) -> None:
    extract, learn = cycle_module.extract_patterns, cycle_module.learn

    def watched_extract(*args, **kwargs):
        seen["extract"] = _blas_threads()
        if fail:
            raise RuntimeError("k-means fails")
        return extract(*args, **kwargs)

    def watched_learn(*args, **kwargs):
        seen["learn"] = _blas_threads()
        return learn(*args, **kwargs)

    monkeypatch.setattr(cycle_module, "extract_patterns", watched_extract)
    monkeypatch.setattr(cycle_module, "learn", watched_learn)


def test_the_cycle_math_runs_on_one_blas_thread_and_the_setting_comes_back(db_url, monkeypatch):
    assert cycle_module.CYCLE_BLAS_THREADS == 1
    seen: dict[str, list[int]] = {}
    _watch(monkeypatch, seen)
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(40, 8, seed=1))
        with threadpool_limits(limits=OUTSIDE, user_api="blas"):
            assert set(_blas_threads()) == {OUTSIDE}
            result = store.run_cycle(force=True)
            assert set(_blas_threads()) == {OUTSIDE}
    finally:
        store.close()
    assert result.status == "completed" and result.patterns_extracted
    assert set(seen["extract"]) == {1} and set(seen["learn"]) == {1}


def test_a_failing_cycle_gives_the_setting_back(db_url, monkeypatch):
    seen: dict[str, list[int]] = {}
    _watch(monkeypatch, seen, fail=True)
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(40, 8, seed=2))
        with threadpool_limits(limits=OUTSIDE, user_api="blas"):
            with pytest.raises(CycleFailedError):
                store.run_cycle(force=True)
            assert set(_blas_threads()) == {OUTSIDE}
    finally:
        store.close()
    assert set(seen["extract"]) == {1}


def test_no_limit_leaves_the_libraries_setting(db_url, monkeypatch):
    monkeypatch.setattr(cycle_module, "CYCLE_BLAS_THREADS", None)
    seen: dict[str, list[int]] = {}
    _watch(monkeypatch, seen)
    store = SonaStore(db_url, CONFIG)
    try:
        store.record_trajectories(make_trajectories(40, 8, seed=3))
        with threadpool_limits(limits=OUTSIDE, user_api="blas"):
            store.run_cycle(force=True)
    finally:
        store.close()
    assert set(seen["extract"]) == {OUTSIDE} and set(seen["learn"]) == {OUTSIDE}


class _FakeController:
    """Stands for threadpoolctl's controller: the threads setting as a number
    (OpenBLAS ignores a setting made from another thread once the main thread
    has made one, so real threads cannot show this logic in one process)."""

    def __init__(self) -> None:
        self.threads = OUTSIDE

    def limit(self, *, limits: int, user_api: str) -> _FakeController._Limiter:
        assert user_api == "blas"
        return self._Limiter(self, limits)

    class _Limiter:
        def __init__(self, controller: _FakeController, limit: int):
            self.controller, self.original = controller, controller.threads
            controller.threads = limit

        def restore_original_limits(self) -> None:
            self.controller.threads = self.original


def test_blocks_in_two_threads_share_one_limit_and_the_last_restores_it(monkeypatch):
    """Cycles of two stores in two threads: the first to end must not give the
    other's math its threads back, and the last must restore the setting from
    before the first (not the limit it found)."""
    fake = _FakeController()
    monkeypatch.setitem(cycle_module._blas, "controller", fake)
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    left = [threading.Event(), threading.Event()]

    def cycle(i: int) -> None:
        with blas_threads(1):
            entered[i].set()
            leave[i].wait()
        left[i].set()

    threads = [threading.Thread(target=cycle, args=(i,)) for i in (0, 1)]
    threads[0].start()
    assert entered[0].wait(60)
    threads[1].start()
    assert entered[1].wait(60)
    assert fake.threads == 1
    leave[0].set()
    assert left[0].wait(60)
    assert fake.threads == 1  # the other block still runs
    leave[1].set()
    assert left[1].wait(60)
    for thread in threads:
        thread.join()
    assert fake.threads == OUTSIDE
