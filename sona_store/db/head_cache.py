"""A process-local copy of what is current (the head, base LoRA, micro-LoRA
projector, pattern index), so inference-path calls do not query the database
each time.

Each cached value is kept under the part of the `Head` it was built from (the
pattern index under the head cycle and its prune count, the base LoRA under
the base pointer, the projector under the micro pointer): a micro-LoRA flush
moves only the micro pointer, so the pattern index outlives it. The head
itself is re-read at most every `refresh_seconds` (other processes' cycles,
rollbacks, flushes and prunes show up within that bound) and at once when
this process moved it (`invalidate`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.models import Pattern, StoreHead

T = TypeVar("T")


class Head(NamedTuple):
    """The `store_head` pointers, and how many of the head cycle's patterns are
    pruned: a prune moves no pointer but changes the patterns served."""

    cycle_id: int | None
    base_lora_version_id: int
    micro_lora_version_id: int
    ewc_state_id: int
    patterns_pruned: int

    @property
    def patterns(self) -> tuple[int | None, int]:
        """What the current patterns depend on: the head cycle and its prunes."""
        return self.cycle_id, self.patterns_pruned


# The head, in one statement (the prune count through the index on
# patterns.cycle_id: a cycle's few dozen patterns). Built once: it has no
# parameters, and constructing it is most of what a read costs.
_READ_HEAD = sa.select(
    StoreHead.cycle_id,
    StoreHead.base_lora_version_id,
    StoreHead.micro_lora_version_id,
    StoreHead.ewc_state_id,
    sa.select(sa.func.count())
    .select_from(Pattern)
    .where(Pattern.cycle_id == StoreHead.cycle_id, Pattern.pruned_at.is_not(None))
    .scalar_subquery(),
).where(StoreHead.id == 1)


def read_head(session: Session) -> Head:
    row = session.execute(_READ_HEAD).one_or_none()
    if row is None:
        raise LookupError("the store has no head row: it was not initialised")
    return Head(row[0], row[1], row[2], row[3], int(row[4] or 0))


class HeadCache:
    def __init__(self, read_head: Callable[[], Head], refresh_seconds: float = 0.5):
        self._read_head = read_head
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._head: Head | None = None
        self._checked_at = 0.0
        self._values: dict[str, tuple[Hashable, Any]] = {}
        # Bumped by invalidate(): a head read that started before it is not kept.
        self._generation = 0

    def invalidate(self) -> None:
        """This process moved the head: read it again at the next `get`. Values
        stay; each is rebuilt only if the pointer it depends on moved."""
        with self._lock:
            self._generation += 1
            self._head = None

    def head(self) -> Head:
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

    def get(
        self, name: str, depends_on: Callable[[Head], Hashable], load: Callable[[Head], T]
    ) -> T:
        """The value `name` for the current head: the cached one while
        `depends_on(head)` is what it was built for, else `load(head)`. Values
        are built from immutable versions (and a cycle's patterns less its
        prunes), so one built for a key stays right for that key."""
        head = self.head()
        key = depends_on(head)
        with self._lock:
            cached = self._values.get(name)
            if cached is not None and cached[0] == key:
                return cast(T, cached[1])
        value = load(head)
        with self._lock:
            self._values[name] = (key, value)
        return value
