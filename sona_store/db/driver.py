"""Prebuilt statements run on the driver's cursor, for the recording hot path.

SQLAlchemy's work preparing, running and wrapping each statement costs
several times what SQLite needs to run the hot path's small statements
(benchmarks/README.md, "Figures behind the code's choices"). A recorded
batch of 100 trajectories runs about a dozen of them (its inserts and its
micro-LoRA flush), so the hot path sends fixed SQL, with every value bound as a
parameter, to the DBAPI cursor of the transaction's own Connection. It stays
inside that Connection's transaction; a driver error is raised as SQLAlchemy's
exception class, and a connection the dialect reports as broken is
invalidated, as `Connection.execute` would do.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

INSERT_CHUNK = 2000  # rows per executemany call; keeps parameter lists bounded
# Bound parameters per multi-row INSERT on SQLite: its default limit since
# 3.32 (a build with a lower one says so, see `_parameter_limit`). Few large
# statements, not many small ones: each one hands the GIL back and forth
# with the recording threads once (benchmarks/README.md, "Figures behind
# the code's choices").
MULTIROW_PARAMETERS = 32766


class Driver:
    """The cursor of one Connection's transaction. SQL is written with `?`
    markers and adapted once per paramstyle (PostgreSQL's drivers take %s)."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.dialect = connection.dialect
        self._cursor = connection.connection.cursor()
        self._format = self.dialect.paramstyle != "qmark"

    def sql(self, text: str) -> str:
        return _adapted(text) if self._format else text

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor (fetch from it at once)."""
        return self._run(self._cursor, text, params)

    def rows(
        self, text: str, params: Sequence[Any] = (), *, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        """Every row of one statement. `binary`: psycopg sends them in binary
        (bytea arrives as bytes, not as hex text, twice the size, to decode)."""
        if not (binary and self.dialect.driver == "psycopg"):
            rows: list[tuple[Any, ...]] = self.execute(text, params).fetchall()
            return rows
        cursor = cast(Any, self.connection.connection.dbapi_connection).cursor(binary=True)
        try:
            # Planned for its own parameters each time: psycopg prepares a
            # statement on its fifth run, and PostgreSQL's generic plan for
            # `= ANY(array)` hashes whole tables, which turns a read of a few
            # rows into a scan.
            fetched: list[tuple[Any, ...]] = self._run(
                cursor, text, params, prepare=False
            ).fetchall()
            return fetched
        finally:
            cursor.close()

    def _run(self, cursor: Any, text: str, params: Sequence[Any], **options: Any) -> Any:
        sql = self.sql(text)
        try:
            cursor.execute(sql, params, **options)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, sql, params, cursor) from exc
        return cursor

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        sql = self.sql(text)
        try:
            self._cursor.executemany(sql, rows)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, sql, rows[:1], self._cursor) from exc

    def insert_many(
        self, table: sa.FromClause, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        """executemany of plain tuples already in their stored form (bytes,
        numbers, text), so no per-value processing runs."""
        self._insert(table, columns, rows, {})

    def insert_columns(self, table: sa.FromClause, columns: Mapping[str, list[Any]]) -> None:
        """`insert_many` of values given column by column (equal lengths, at
        least one row). A column the whole batch fills with NULL, '[]' or 0
        goes into the SQL as that literal instead of being bound once a row."""
        bound: dict[str, list[Any]] = {}
        literals: dict[str, str] = {}
        for name, values in columns.items():
            literal = _literal(values)
            if literal is None:
                bound[name] = values
            else:
                literals[name] = literal
        self._insert(table, list(bound), list(zip(*bound.values(), strict=True)), literals)

    def insert_returning_id(self, table: sa.FromClause, values: Mapping[str, Any]) -> int:
        """Insert one row; its new `id`."""
        sql = _insert_sql(table, list(values), {}) + " RETURNING id"
        return int(self.scalar(sql, tuple(values.values())))

    def _insert(
        self,
        table: sa.FromClause,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
        literals: Mapping[str, str],
    ) -> None:
        sql = _insert_sql(table, columns, literals)
        if self.dialect.name == "sqlite" and columns:
            self._insert_multirow(sql, len(columns), rows)
            return
        for start in range(0, len(rows), INSERT_CHUNK):
            self.executemany(sql, rows[start : start + INSERT_CHUNK])

    def _insert_multirow(self, sql: str, width: int, rows: list[tuple[Any, ...]]) -> None:
        """SQLite: rows as multi-row INSERTs (VALUES (..), (..), ...), as many
        rows a statement as the parameter limit takes, the rest in
        power-of-two pieces (a few statement
        texts per table, each built once). sqlite3's executemany releases the
        GIL around every row; a multi-row statement once, so the writer thread
        does not hand the GIL back and forth with recording threads per row."""
        most = 1 << ((self._parameter_limit() // max(width, 1)).bit_length() - 1)
        start, n = 0, len(rows)
        while start < n:
            k = most if n - start >= most else 1 << ((n - start).bit_length() - 1)
            chunk = rows[start : start + k]
            self._run(self._cursor, _multirow(sql, width, k), list(chain.from_iterable(chunk)))
            start += k

    def _parameter_limit(self) -> int:
        raw = self.connection.connection.dbapi_connection
        getlimit = getattr(raw, "getlimit", None)  # Python 3.11+
        if getlimit is None:
            return 999  # SQLite's limit before 3.32
        return min(MULTIROW_PARAMETERS, int(getlimit(9)))  # SQLITE_LIMIT_VARIABLE_NUMBER

    @contextlib.contextmanager
    def savepoint(self, name: str) -> Iterator[None]:
        """SAVEPOINT `name` (a fixed identifier): released on success, rolled
        back to and released when the block raises."""
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.execute(f"RELEASE SAVEPOINT {name}")

    def scalar(self, text: str, params: Sequence[Any] = ()) -> Any:
        row = self.execute(text, params).fetchone()
        return None if row is None else row[0]

    def stored(self, column: sa.ColumnElement[Any], value: object) -> object:
        """A value as the column's type sends it to this driver (e.g. SQLite's
        datetime text), converted once."""
        processors = _PROCESSORS.setdefault(self.dialect, {})
        if column not in processors:  # looking one up is not free: cache it
            impl = column.type.dialect_impl(self.dialect)
            processors[column] = impl.bind_processor(self.dialect)
        process = processors[column]
        return process(value) if process else value

    def _wrapped(self, exc: Exception, sql: str, params: Any, cursor: Any) -> sa.exc.DBAPIError:
        dbapi_connection = self.connection.connection.dbapi_connection
        broken = self.dialect.is_disconnect(cast(Any, exc), dbapi_connection, cursor)
        if broken:
            self.connection.invalidate(exc)
        return cast(
            sa.exc.DBAPIError,
            sa.exc.DBAPIError.instance(
                sql,
                params,
                exc,
                self.dialect.loaded_dbapi.Error,
                connection_invalidated=broken,
                dialect=self.dialect,
            ),
        )


def _insert_sql(table: sa.FromClause, columns: Sequence[str], literals: Mapping[str, str]) -> str:
    """INSERT with a `?` per column and the literals (SQL this module wrote)."""
    names = [*columns, *literals]
    values = ["?"] * len(columns) + list(literals.values())
    return f"INSERT INTO {cast(sa.Table, table).name} ({', '.join(names)}) VALUES ({', '.join(values)})"


@functools.lru_cache(maxsize=256)
def _multirow(sql: str, width: int, rows: int) -> str:
    """`sql` (one row's INSERT, `width` bound columns) for `rows` rows."""
    head, values = sql.split(" VALUES ", 1)
    del width  # part of the cache key: the same text never has two widths
    return f"{head} VALUES {', '.join([values] * rows)}"


# Values that, when a whole batch holds them in a column, go into the SQL as
# a literal instead of being bound once a row: binding the usual NULLs, "[]"
# and step 0 was a large share of the trajectories insert.
_LITERALS = ((None, "NULL"), ("[]", "'[]'"), (0, "0"))


def _literal(values: list[Any]) -> str | None:
    """The SQL literal for a column whose every value is one of _LITERALS."""
    first = values[0]
    if type(first) is bool:
        return None
    for value, sql in _LITERALS:
        if (first is value or first == value) and values.count(first) == len(values):
            return sql
    return None


_PROCESSORS: weakref.WeakKeyDictionary[Dialect, dict[sa.ColumnElement[Any], Any]] = (
    weakref.WeakKeyDictionary()
)
_ADAPTED: dict[str, str] = {}


def _adapted(text: str) -> str:
    """`?` markers as `%s` (the hot path's SQL holds no other `?` or `%`)."""
    sql = _ADAPTED.get(text)
    if sql is None:
        sql = _ADAPTED[text] = text.replace("%", "%%").replace("?", "%s")
    return sql
