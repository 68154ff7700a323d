"""Column types with no portable SQL form of their own."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlalchemy import DateTime, LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

FLOAT32 = np.dtype("<f4")


def vector_to_bytes(value: Any) -> bytes:
    """float32 little-endian bytes of a finite 1-D vector (any array is flattened
    by the caller first: a vector column never guesses a shape)."""
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"a vector column takes a 1-D array, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=FLOAT32)
    if not np.isfinite(array).all():
        raise ValueError("a vector column takes finite values only (NaN or infinity given)")
    return array.tobytes()


def bytes_to_vector(data: bytes) -> np.ndarray:
    """Read-only float32 view of stored bytes: stored history is immutable."""
    return np.frombuffer(data, dtype=FLOAT32)


class Float32Vector(TypeDecorator[np.ndarray]):
    """A float32 vector stored compactly as bytes (BLOB on SQLite, BYTEA on
    PostgreSQL): 4 bytes an entry, no per-value overhead, exact round trip."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if len(data) % 4:
                raise ValueError("vector bytes must be a whole number of float32 values")
            return data
        return vector_to_bytes(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> np.ndarray | None:
        if value is None:
            return None
        return bytes_to_vector(bytes(value))


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python on every backend. SQLite keeps no offset, so
    values are converted to UTC on the way in and tagged UTC on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; sona_store stores timezone-aware UTC")
        utc: dt.datetime = value.astimezone(dt.timezone.utc)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        moment: dt.datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
