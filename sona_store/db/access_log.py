"""Pattern accesses (find_patterns hits) counted in memory and written in
batches, so serving a query never waits on a database write."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sona_store.db.engine import short_error, transaction
from sona_store.db.models import Pattern
from sona_store.db.types import utcnow

logger = logging.getLogger("sona_store")


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

    def touch(self, pattern_ids: list[int]) -> None:
        with self._lock:
            self._counts.update(pattern_ids)
            self._pending += len(pattern_ids)
            due = (
                self._pending >= self.max_pending
                or time.monotonic() - self._since >= self.max_age_seconds
            )
        if due:
            self._flush_in_background()

    def _flush_in_background(self) -> None:
        """Write the counts off the caller's thread: on SQLite the write may
        wait for a cycle's lock, and serving a query must not."""
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
            self._since = time.monotonic()

        def run() -> None:
            try:
                self.flush()
            except Exception as exc:  # the counts were kept for the next attempt
                logger.warning("pattern access counts not written yet: %s", short_error(exc))
            finally:
                with self._lock:
                    self._flushing = False

        threading.Thread(target=run, name="sona-access-log", daemon=True).start()

    def flush(self) -> int:
        """Write the counted accesses (access_count += n, last_accessed = now)."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            self._pending = 0
            self._since = time.monotonic()
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
