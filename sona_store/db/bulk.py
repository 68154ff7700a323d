"""Inserting many rows at driver speed."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

INSERT_CHUNK = 2000  # rows per executemany call; keeps parameter lists bounded


def bulk_insert(session: Session, table: sa.Table, columns: list[str], rows: list[tuple]) -> None:
    """executemany of plain tuples through the driver: values are already in
    their stored form (bytes, numbers, text), so SQLAlchemy's per-value
    processing is skipped. Parameters are bound, never formatted into SQL."""
    connection = session.connection()
    marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([marker] * len(columns))})"
    )
    for start in range(0, len(rows), INSERT_CHUNK):
        connection.exec_driver_sql(sql, rows[start : start + INSERT_CHUNK])
