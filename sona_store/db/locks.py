"""The store-wide cycle lock: one cycle (or rollback) at a time per store,
whatever process runs it; and the micro-LoRA flush lock, which recording
transactions try without waiting (`try_micro_flush_lock`).

PostgreSQL: a transaction-scoped advisory lock, released by commit or rollback
(or by the server when a killed client's connection drops). Its key is the
store's own (`cycle_lock_key`): stores in other schemas of the same database
never wait on it. SQLite: the transaction was begun IMMEDIATE, which already
holds the database write lock.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection
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


MICRO_FLUSH_LOCK_KEY = 0x50A5_F105  # the default store's key (no schema, or `public`)


def micro_flush_lock_key(schema: str | None) -> int:
    return lock_key(schema, MICRO_FLUSH_LOCK_KEY, "micro_flush")


def try_micro_flush_lock(connection: Connection) -> bool:
    """Whether this recording transaction may run the micro-LoRA flush now.

    PostgreSQL: a transaction-scoped advisory lock, taken without waiting.
    The flush itself locks the head row (`state.micro_lora_pointer`), which
    serialises it with other flushes, quarantines and rollbacks; a recording
    transaction that waited for that row would make every writer of every
    process take turns on it until the flushing transaction commits. With
    this lock only one recording transaction at a time goes for the head row;
    the others find it taken, keep their signals queued and commit their
    trajectories at once (a later batch, or `flush`, applies them).
    SQLite: always True (the recording transaction already holds the write
    lock, taken at BEGIN IMMEDIATE)."""
    if connection.dialect.name != "postgresql":
        return True
    key = micro_flush_lock_key(engine_schema(connection))
    return bool(
        connection.exec_driver_sql("SELECT pg_try_advisory_xact_lock(%(k)s)", {"k": key}).scalar()
    )
