"""The schema is built and upgraded by the Alembic migrations only (never by
`create_all`), so a fresh database and an upgraded one are the same thing.

The migrations ship inside the wheel as `sona_store/migrations`; in a source
checkout they are the top-level `migrations/` folder next to `alembic.ini`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine

from sona_store.db.engine import (
    IMMEDIATE,
    engine_schema,
    mask_url,
    normalise_url,
    store_label,
    translate_errors,
)
from sona_store.db.stores import lock_key, quoted
from sona_store.errors import FileAccessError, SchemaVersionError

VERSION_TABLE = "sona_store_version"
UPGRADE_LOCK_KEY = 0x50A5_0001  # PostgreSQL advisory lock held while migrating


def migrations_dir() -> Path:
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileAccessError(
        "sona_store's migrations folder is missing from this installation: reinstall sona-store"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise FileAccessError(
            "sona_store's migrations folder has no revisions: reinstall sona-store"
        )
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def _locked_begin(engine: Engine) -> Connection:
    """A transaction holding the store's upgrade lock; on PostgreSQL with a
    store schema, the schema exists once this returns (created under the lock,
    in the migration's transaction)."""
    connection = engine.execution_options(**{IMMEDIATE: True}).connect()
    connection.begin()
    if engine.dialect.name == "postgresql":
        schema = engine_schema(engine)
        key = lock_key(schema, UPGRADE_LOCK_KEY, "upgrade")
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        exists = sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :name")
        if schema is not None and connection.scalar(exists, {"name": schema}) is None:
            # Only when missing: CREATE SCHEMA needs the database's CREATE
            # privilege even with IF NOT EXISTS, which an owner of the schema
            # alone may lack.
            connection.execute(sa.text(f"CREATE SCHEMA {quoted(engine, schema)}"))
    return connection


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction, serialised between processes."""
    _migrate(engine, command.upgrade, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _migrate(engine, command.downgrade, "downgrade", revision)


def _migrate(engine: Engine, run: Callable[[Config, str], None], verb: str, revision: str) -> None:
    with translate_errors(engine):
        connection = _locked_begin(engine)
        try:
            current = current_revision(connection)
            if current is not None and current not in known_revisions():
                raise SchemaVersionError(_newer_database_message(engine, current))
            try:
                run(alembic_config(connection), revision)
            except CommandError as exc:  # e.g. an unknown target revision
                raise SchemaVersionError(
                    f"cannot {verb} {store_label(engine)} to {revision!r}: {exc}"
                ) from None
            connection.commit()
        finally:
            connection.close()


def upgrade_command(engine: Engine) -> str:
    """The command line that upgrades this store."""
    schema = engine_schema(engine)
    where = f" --schema {schema}" if schema else ""
    return f"sona-store --url {mask_url(engine.url)}{where} db upgrade"


def _newer_database_message(engine: Engine, current: str) -> str:
    return (
        f"{store_label(engine)} is at schema revision {current}, which this "
        f"sona_store does not know (it needs {head_revision()}); the database was upgraded "
        "by a newer sona_store: upgrade the sona-store package"
    )


def database_revision(engine: Engine) -> str | None:
    with translate_errors(engine), engine.connect() as connection:
        return current_revision(connection)


CREATE_HINT = "create it with: sona-store --url {url} db upgrade (or ingest into it)"


def require_existing_file(url: str | sa.URL) -> None:
    """A SQLite URL must name a file that exists: connecting would create an
    empty one, and a misspelt path would look like a store that lost its data."""
    parsed = normalise_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return
    if database.startswith("file:") or parsed.query.get("mode") == "memory":
        return  # a URI filename: SQLite resolves it
    if not Path(database).exists():
        shown = mask_url(parsed)
        raise SchemaVersionError(
            f"no store at {shown}: {Path(database).resolve()} does not exist; "
            + CREATE_HINT.format(url=shown)
        )


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Create the schema in an empty database; refuse a database at any other
    revision than this version's head, naming the command that fixes it."""
    with translate_errors(engine), engine.connect() as connection:
        current = current_revision(connection)
        tables = set(sa.inspect(connection).get_table_names())
    head = head_revision()
    if current == head:
        return
    where = store_label(engine)
    if current is None:
        ours = {"cycles", "trajectories", "store_settings"}
        if tables & ours:
            raise SchemaVersionError(
                f"{where} has sona_store tables but no {VERSION_TABLE} table; "
                "it was not created by sona_store's migrations"
            )
        if not create:
            raise SchemaVersionError(
                f"{where} has no sona_store schema; create it with: "
                f"{upgrade_command(engine)} (or ingest into it)"
            )
        upgrade(engine)
        return
    if current in known_revisions():
        raise SchemaVersionError(
            f"{where} is at schema revision {current}, this sona_store needs {head}; "
            f"run: {upgrade_command(engine)}"
        )
    raise SchemaVersionError(_newer_database_message(engine, current))
