"""The store-wide cycle lock: one cycle (or rollback) at a time per database,
whatever process runs it.

PostgreSQL: a transaction-scoped advisory lock, released by commit or rollback
(or by the server when a killed client's connection drops). SQLite: the
transaction was begun IMMEDIATE, which already holds the database write lock.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

CYCLE_LOCK_KEY = 0x50A5_C1C1


def acquire_cycle_lock(session: Session, *, wait: bool = True) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        # The session begins lazily: connect now, so BEGIN IMMEDIATE has run and
        # the write lock is held when this returns (cycles time themselves from here).
        session.connection()
        return True
    if wait:
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CYCLE_LOCK_KEY})
        return True
    return bool(
        session.scalar(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": CYCLE_LOCK_KEY})
    )
