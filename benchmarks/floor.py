"""The handoff floor: the least any in-process Python recorder can do per
call, measured with the recording benchmark's own call loop.

An `end_trajectory(wait=True)` that returns the id once a commit holding it
is done must, in CPython, hand the trajectory to whichever thread commits
and block until that thread says so; with several recording threads that
is a sleep and a wake-up per call, under one GIL. This floor does only
that: it converts the two vectors with numpy's cheapest conversion (no
check of any kind), appends them to a deque and, with `wait=True`, blocks
on a lock the one consumer thread releases at once. No validation, no
database, no learning. Whatever the store does costs more than this, so a
shape whose floor is below a target's ratio of the reference cannot meet
that target by any work on the store (benchmarks/README.md)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np


class _FloorTrajectory:
    __slots__ = ("query", "activations")

    def __init__(self, query: Any):
        self.query = np.asarray(query, dtype=np.float64)
        self.activations: np.ndarray | None = None

    def add_step(self, activations: Any, attention_weights: Any, reward: float) -> None:
        self.activations = np.asarray(activations, dtype=np.float64)


class HandoffFloor:
    """`begin_trajectory`/`end_trajectory` doing only the handoff; one
    consumer thread takes whatever has arrived and releases its waiters."""

    def __init__(self) -> None:
        self._queue: deque[tuple[threading.Lock | None, _FloorTrajectory]] = deque()
        self._wake = threading.Semaphore(0)
        self._stopping = False
        self.consumed = 0
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def begin_trajectory(self, query: Any) -> _FloorTrajectory:
        return _FloorTrajectory(query)

    def end_trajectory(self, t: _FloorTrajectory, quality: float, *, wait: bool) -> None:
        lock = threading.Lock() if wait else None
        if lock is not None:
            lock.acquire()
        self._queue.append((lock, t))
        self._wake.release()
        if lock is not None:
            lock.acquire()  # released by the consumer

    def _consume(self) -> None:
        while True:
            self._wake.acquire()
            while self._queue:
                lock, _ = self._queue.popleft()
                self.consumed += 1
                if lock is not None:
                    lock.release()
            if self._stopping and not self._queue:
                return

    def close(self) -> None:
        """Once every call has returned: wait for the consumer to drain."""
        self._stopping = True
        self._wake.release()
        self._thread.join()


def floor_rate(
    items: list[dict[str, Any]], threads: int, wait: bool, calls: Callable[..., None]
) -> float:
    """Trajectories per second through the floor, `threads` callers each
    running `calls(recorder, items, wait, latencies)`: the recording
    benchmark's own call loop."""
    floor = HandoffFloor()
    shares = [items[i::threads] for i in range(threads)]
    sink: list[list[float]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(target=calls, args=(floor, share, wait, out))
        for share, out in zip(shares, sink, strict=True)
    ]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    floor.close()
    seconds = time.perf_counter() - started
    assert floor.consumed == len(items)
    return len(items) / seconds
