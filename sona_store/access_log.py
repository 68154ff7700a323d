"""Pattern accesses (find_patterns hits) counted in memory and written in
batches, so serving a query never waits on a database write."""

from __future__ import annotations

import threading
import time
from collections import Counter

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
        self._since = time.monotonic()

    def touch(self, pattern_ids: list[int]) -> None:
        with self._lock:
            self._counts.update(pattern_ids)
            due = (
                sum(self._counts.values()) >= self.max_pending
                or time.monotonic() - self._since >= self.max_age_seconds
            )
        if due:
            self.flush()

    def flush(self) -> int:
        """Write the counted accesses (access_count += n, last_accessed = now)."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            self._since = time.monotonic()
        if not counts:
            return 0
        now = utcnow()
        try:
            with transaction(self.engine, immediate=True) as session:
                table = Pattern.__table__  # Core executemany, not ORM bulk-by-key
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
            raise
        return sum(counts.values())
