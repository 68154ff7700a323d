"""Several stores in one PostgreSQL database, one schema each.

A store opened with `schema=NAME` lives entirely in that schema: its
connections set `search_path` to it alone, so the migrations create the
tables, views, SQL functions and the Alembic version table there, and every
unqualified query finds only that store's objects. Its advisory lock keys are
derived from the name, so two stores never wait on each other's locks.

No schema (the default) is what sona_store always did: the connection's own
`search_path` (normally `public`) and the original lock keys. `public` named
explicitly is that same store, with the same keys.

SQLite keeps one store per file and refuses a schema.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sona_store.errors import StoreSchemaError

DEFAULT_SCHEMA = "public"
# PostgreSQL identifiers of up to 63 bytes; lowercase only, so the name reads
# the same unquoted in psql as sona_store quotes it. `pg_` is reserved.
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED = ("pg_", "information_schema")


def validate_schema_name(name: object) -> str:
    """The name itself when it is a usable schema name; StoreSchemaError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StoreSchemaError(
            f"invalid store schema name {name!r}: use 1 to 63 lowercase letters, digits "
            "and underscores, starting with a letter or underscore"
        )
    if name.startswith(_RESERVED):
        raise StoreSchemaError(
            f"invalid store schema name {name!r}: names starting with 'pg_' and "
            "information_schema are PostgreSQL's own"
        )
    return name


def refuse_on_sqlite(schema: str | None, backend: str) -> None:
    if schema is not None and backend != "postgresql":
        raise StoreSchemaError(
            f"schema={schema!r}: a schema is for PostgreSQL; on SQLite one file is one "
            "store, so open another file instead"
        )


def lock_key(schema: str | None, default_key: int, purpose: str) -> int:
    """The advisory lock key of `purpose` for the store in `schema`: the
    original constant for the default store, else 64 bits of a hash of the
    schema's name (a collision between two names has odds of 2^-64)."""
    if schema is None or schema == DEFAULT_SCHEMA:
        return default_key
    digest = hashlib.blake2b(f"sona_store/{schema}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def quoted(engine_or_dialect: Engine | sa.engine.Dialect, name: str) -> str:
    """A validated schema name as a quoted SQL identifier."""
    dialect = (
        engine_or_dialect.dialect if isinstance(engine_or_dialect, Engine) else engine_or_dialect
    )
    quoted_name: str = dialect.identifier_preparer.quote_identifier(validate_schema_name(name))
    return quoted_name


@dataclass(frozen=True)
class StoreInfo:
    """One store found in a PostgreSQL database."""

    schema: str
    revision: str | None


def list_stores(engine: Engine) -> list[StoreInfo]:
    """The schemas of a PostgreSQL database that hold a sona_store (a version
    table), with their schema revision, by name."""
    from sona_store.db.schema import VERSION_TABLE

    if engine.dialect.name != "postgresql":
        raise StoreSchemaError(
            "SQLite keeps one store per file: `stores` lists the schemas of a PostgreSQL database"
        )
    found = sa.text(
        "SELECT table_schema FROM information_schema.tables"
        " WHERE table_name = :table ORDER BY table_schema"
    )
    stores = []
    with engine.connect() as connection:
        for schema in connection.execute(found, {"table": VERSION_TABLE}).scalars():
            try:
                validate_schema_name(schema)
            except StoreSchemaError:  # a name sona_store would not make
                continue
            table = f"{quoted(engine, schema)}.{VERSION_TABLE}"
            revision = connection.execute(sa.text(f"SELECT version_num FROM {table}")).scalar()
            stores.append(StoreInfo(schema, revision))
    return stores
