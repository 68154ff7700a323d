"""PostgreSQL's bulk inserts as binary COPY (psycopg 3).

A batch of trajectories is three tables of rows. PostgreSQL runs an
`executemany` of INSERTs as one statement execution per row (psycopg 3
pipelines them, yet the server still parses, plans and executes each row
apart); `COPY ... FROM STDIN (FORMAT BINARY)` streams all the rows of a
table into one executor run, and its binary format sends the float32 bytes,
the numbers and the timestamps as they are stored, with no text to parse on
either side. The measured difference is in benchmarks/README.md.

Values travel as data in the COPY stream, typed by `Copy.set_types`, never as
SQL text: the only SQL written here is the COPY statement itself, made of the
table's and columns' names from the models, quoted as identifiers by the
dialect.

SQLite (and any other driver) keeps its `executemany` path; callers ask
`copy_supported` first.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect


def copy_supported(connection: Connection) -> bool:
    """True on PostgreSQL through psycopg 3 (the driver the store installs)."""
    dialect = connection.dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def copy_columns(
    connection: Connection, table: sa.FromClause, columns: Mapping[str, Sequence[Any]]
) -> None:
    """Insert rows given column by column (equal lengths, each value in the
    form the column's type stores: bytes for vectors, JSON text for JSON
    columns) into `table`, in `connection`'s transaction, as one binary COPY.
    A failure (a constraint, a lost connection) raises SQLAlchemy's exception
    class, as `Connection.execute` would, and leaves the transaction to roll
    back."""
    real = cast(sa.Table, table)
    # A nullable column without a default that the whole batch leaves NULL
    # (no route, no latency, no layer name: the usual batch) is left out of
    # the COPY: PostgreSQL fills it with NULL without a value a row to read.
    names = [name for name, column in columns.items() if not _all_null(real.c[name], column)]
    values = [columns[name] for name in names]
    if not values or not len(values[0]):
        return
    statement, types = _statement(real, names, connection.dialect)
    dbapi_connection = cast(Any, connection.connection.dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        with cursor.copy(statement) as copy:
            copy.set_types(types)
            write = copy.write_row
            for row in zip(*values, strict=True):
                write(row)
    except connection.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(connection, exc, statement, cursor) from exc
    finally:
        cursor.close()


def _all_null(column: sa.Column[Any], values: Sequence[Any]) -> bool:
    return (
        column.nullable is True
        and column.server_default is None
        and len(values) > 0
        and values[0] is None
        and list(values).count(None) == len(values)
    )


# The PostgreSQL binary type each stored column is sent as. Text-like columns
# go as `text`: JSON's and varchar's binary forms are their UTF-8 text, which
# the column's own input function then checks (json parses it, varchar(n)
# checks its length).
_BINARY_TYPES = (
    ("BIGINT", "int8"),
    ("INTEGER", "int4"),
    ("SMALLINT", "int2"),
    ("DOUBLE PRECISION", "float8"),
    ("FLOAT", "float8"),
    ("BOOLEAN", "bool"),
    ("TIMESTAMP WITH TIME ZONE", "timestamptz"),
    ("BYTEA", "bytea"),
    ("VARCHAR", "text"),
    ("TEXT", "text"),
    ("JSON", "text"),
)

_STATEMENTS: weakref.WeakKeyDictionary[Dialect, dict[tuple[str, ...], tuple[str, list[str]]]] = (
    weakref.WeakKeyDictionary()
)


def _statement(table: sa.Table, names: list[str], dialect: Dialect) -> tuple[str, list[str]]:
    """The COPY statement for these columns of `table`, and their binary types
    (built once per table and column list)."""
    cache = _STATEMENTS.setdefault(dialect, {})
    key = (table.name, *names)
    found = cache.get(key)
    if found is None:
        quote = dialect.identifier_preparer.quote
        listed = ", ".join(quote(name) for name in names)
        statement = f"COPY {quote(table.name)} ({listed}) FROM STDIN (FORMAT BINARY)"
        types = [_binary_type(table.c[name], dialect) for name in names]
        found = cache[key] = (statement, types)
    return found


def _binary_type(column: sa.Column[Any], dialect: Dialect) -> str:
    compiled = column.type.compile(dialect=dialect).upper()
    for prefix, name in _BINARY_TYPES:
        if compiled.startswith(prefix):
            return name
    raise TypeError(f"no binary COPY type for column {column.name} ({compiled})")


def _wrapped(connection: Connection, exc: Exception, statement: str, cursor: Any) -> Exception:
    """`exc` as SQLAlchemy's exception class; a connection the dialect reports
    broken is invalidated (as `Connection.execute` does)."""
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    broken = dialect.is_disconnect(cast(Any, exc), dbapi_connection, cursor)
    if broken:
        connection.invalidate(exc)
    return cast(
        Exception,
        sa.exc.DBAPIError.instance(
            statement,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=broken,
            dialect=dialect,
        ),
    )
