"""The store-wide cycle lock: one cycle (or rollback) at a time per store,
whatever process runs it.

PostgreSQL: a transaction-scoped advisory lock, released by commit or rollback
(or by the server when a killed client's connection drops). Its key is the
store's own (`cycle_lock_key`): stores in other schemas of the same database
never wait on it. SQLite: the transaction was begun IMMEDIATE, which already
holds the database write lock.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sona_store.db.engine import engine_schema
from sona_store.db.stores import lock_key

CYCLE_LOCK_KEY = 0x50A5_C1C1  # the default store's key (no schema, or `public`)


def cycle_lock_key(schema: str | None) -> int:
    return lock_key(schema, CYCLE_LOCK_KEY, "cycle")


def acquire_cycle_lock(session: Session, *, wait: bool = True) -> bool:
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        # The session begins lazily: connect now, so BEGIN IMMEDIATE has run and
        # the write lock is held when this returns (cycles time themselves from here).
        session.connection()
        return True
    key = cycle_lock_key(engine_schema(bind))
    if wait:
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        return True
    return bool(session.scalar(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}))
