"""Pattern accesses (find_patterns hits) counted in memory and written in
batches, so serving a query never waits on a database write: `touch` says
when the counts are due, and the store has its writer thread write them
(or, with `background=False`, writes them on the caller's thread)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sona_store.db.engine import transaction
from sona_store.db.models import Pattern
from sona_store.db.types import utcnow


class AccessLog:
    def __init__(self, engine: Engine, max_pending: int = 10_000, max_age_seconds: float = 5.0):
        self.engine = engine
        self.max_pending = max_pending
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._counts: Counter[int] = Counter()
        self._pending = 0  # sum of _counts, kept so touch() stays O(k)
        self._since = time.monotonic()
        self._flushing = False

    def touch(self, pattern_ids: list[int]) -> bool:
        """Count accesses; True when the counts are due to be written (many
        counted, or the oldest count is old), once until they are."""
        with self._lock:
            self._counts.update(pattern_ids)
            self._pending += len(pattern_ids)
            due = not self._flushing and (
                self._pending >= self.max_pending
                or time.monotonic() - self._since >= self.max_age_seconds
            )
            if due:
                self._flushing = True
        return due

    def flush(self) -> int:
        """Write the counted accesses (access_count += n, last_accessed = now)."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            self._pending = 0
            self._since = time.monotonic()
            self._flushing = False
        if not counts:
            return 0
        now = utcnow()
        try:
            with transaction(self.engine, immediate=True) as session:
                table = cast(sa.Table, Pattern.__table__)  # Core executemany, not ORM bulk-by-key
                session.execute(
                    sa.update(table)
                    .where(table.c.id == sa.bindparam("pid"))
                    .values(
                        access_count=table.c.access_count + sa.bindparam("n"),
                        last_accessed=sa.bindparam("at"),
                    ),
                    [{"pid": pid, "n": n, "at": now} for pid, n in sorted(counts.items())],
                )
        except BaseException:
            with self._lock:  # keep them for the next attempt
                self._counts.update(counts)
                self._pending += sum(counts.values())
            raise
        return sum(counts.values())
