"""Alembic environment. sona_store calls it with a connection (see
sona_store/db/schema.py); the `alembic` command line uses alembic.ini's URL or
the SONA_STORE_URL environment variable."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from sona_store.db.engine import create_store_engine
from sona_store.db.models import Base
from sona_store.db.schema import VERSION_TABLE

config = context.config
target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = os.environ.get("SONA_STORE_URL") or config.get_main_option("sqlalchemy.url")
    engine = create_store_engine(url)
    with engine.connect() as connection:
        run_with(connection)
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("sona_store migrations run online only: give a database URL")
run_online()
