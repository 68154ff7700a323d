"""SQL functions the store's SQLite connections carry, so the same queries run
on SQLite as on PostgreSQL (where a migration creates them)."""

from __future__ import annotations

import sqlite3

import numpy as np


def sona_cosine(a: bytes | None, b: bytes | None) -> float | None:
    """Cosine similarity of two stored float32 vectors; 0 when the lengths differ
    or a norm is under 1e-8 (as the reference's pattern similarity); NULL in, NULL out."""
    if a is None or b is None:
        return None
    x = np.frombuffer(a, dtype="<f4").astype(np.float64)
    y = np.frombuffer(b, dtype="<f4").astype(np.float64)
    if len(x) != len(y):
        return 0.0
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx < 1e-8 or ny < 1e-8:
        return 0.0
    return float(x @ y / (nx * ny))


def sona_vector_length(a: bytes | None) -> int | None:
    return None if a is None else len(a) // 4


def register_sqlite_functions(connection: sqlite3.Connection) -> None:
    connection.create_function("sona_cosine", 2, sona_cosine, deterministic=True)
    connection.create_function("sona_vector_length", 1, sona_vector_length, deterministic=True)
