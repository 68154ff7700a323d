"""A process-local copy of what is current (head pointers, base LoRA, pattern
matrix), so inference-path calls do not query the database each time.

The copy is re-validated against the `store_head` row at most every
`refresh_seconds` (other processes' cycles and rollbacks show up within that
bound) and dropped at once when this process moves the head itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class HeadCache:
    def __init__(self, read_head: Callable[[], tuple[Any, ...]], refresh_seconds: float = 0.5):
        self._read_head = read_head
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._head: tuple[Any, ...] | None = None
        self._checked_at = 0.0
        self._values: dict[str, tuple[tuple[Any, ...], Any]] = {}
        # Bumped by invalidate(): a read that started before it is not kept.
        self._generation = 0

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._head = None
            self._values.clear()

    def head(self) -> tuple[Any, ...]:
        now = time.monotonic()
        with self._lock:
            if self._head is not None and now - self._checked_at < self.refresh_seconds:
                return self._head
            generation = self._generation
        head = self._read_head()
        with self._lock:
            if generation == self._generation:
                self._head, self._checked_at = head, now
        return head

    def get(self, name: str, load: Callable[[tuple[Any, ...]], T]) -> T:
        """The value `name` for the current head, loading it when the head moved."""
        with self._lock:
            generation = self._generation
        head = self.head()
        with self._lock:
            cached = self._values.get(name)
            if cached is not None and cached[0] == head:
                return cast(T, cached[1])
        value = load(head)
        with self._lock:
            if generation == self._generation:
                self._values[name] = (head, value)
        return value
