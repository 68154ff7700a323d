"""SQL functions the store's SQLite connections carry, so the same queries run
on SQLite as on PostgreSQL (where migration 0002_sql_views creates them).

A plain `sqlite3` shell does not have them; `register_sqlite_functions` adds
them to any sqlite3 connection.
"""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np

from sona_store.db.types import FLOAT32
from sona_store.learning.embedding import cosine


def sona_cosine(a: bytes | None, b: bytes | None) -> float | None:
    """Cosine similarity of two stored float32 vectors; 0 when the lengths differ
    or a norm is under 1e-8 (as the reference's pattern similarity); NULL in, NULL out."""
    if a is None or b is None:
        return None
    return cosine(np.frombuffer(a, dtype=FLOAT32), np.frombuffer(b, dtype=FLOAT32))


def sona_vector_length(a: bytes | None) -> int | None:
    """Number of float32 entries in a stored vector."""
    return None if a is None else len(a) // 4


def sona_vector(a: bytes | None) -> str | None:
    """A stored vector as JSON array text (SQLite has no array type), each entry
    in the shortest digits that read back as the same float32, as PostgreSQL
    prints real[]. Trailing bytes short of 4 are ignored, as on PostgreSQL."""
    if a is None:
        return None
    values = np.frombuffer(a, dtype=FLOAT32, count=len(a) // 4)
    return "[" + ",".join(_json_number(v) for v in values) + "]"


def _json_number(value: np.float32) -> str:
    return str(value) if math.isfinite(value) else "null"


def sona_bytes(text: str | None) -> bytes | None:
    """The inverse of `sona_vector`: a JSON array of numbers as stored float32
    bytes (each number rounded to float32). Anything else raises."""
    if text is None:
        return None
    values = json.loads(text)
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise ValueError("sona_bytes takes a JSON array of numbers")
    with np.errstate(over="ignore"):
        vector = np.asarray(values, dtype=np.float64).astype(FLOAT32)
    if not np.isfinite(vector).all():
        raise ValueError("sona_bytes: a number is out of float32's range")
    return vector.tobytes()


def register_sqlite_functions(connection: sqlite3.Connection) -> None:
    connection.create_function("sona_cosine", 2, sona_cosine, deterministic=True)
    connection.create_function("sona_vector_length", 1, sona_vector_length, deterministic=True)
    connection.create_function("sona_vector", 1, sona_vector, deterministic=True)
    connection.create_function("sona_bytes", 1, sona_bytes, deterministic=True)
