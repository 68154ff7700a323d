"""The schema: built by the migrations exactly as the models declare it, reversible,
and a database at any other revision (or shape) is refused before anything is
written."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sona_store import SonaConfig, SonaStore
from sona_store.db import schema
from sona_store.db.engine import create_store_engine
from sona_store.db.models import Base
from sona_store.errors import ConfigError, SchemaVersionError

from .helpers import make_trajectories

MODEL_TABLES = set(Base.metadata.tables)


def schema_diff(url: str) -> list:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": schema.VERSION_TABLE, "compare_type": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def row_counts(url: str) -> dict[str, int]:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in sorted(MODEL_TABLES)
            }
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


@pytest.fixture
def engine(db_url):
    e = create_store_engine(db_url)
    try:
        yield e
    finally:
        e.dispose()


# -- (a) migrations == models ---------------------------------------------------


def test_migrations_build_exactly_the_models_schema(db_url, engine):
    schema.upgrade(engine)
    assert table_names(db_url) == MODEL_TABLES | {schema.VERSION_TABLE}
    assert schema_diff(db_url) == []


def test_compare_detects_a_drifted_schema(db_url, engine):
    """The comparison above is not vacuous: a column the models lack shows up."""
    schema.upgrade(engine)
    execute(db_url, "ALTER TABLE patterns ADD COLUMN surprise INTEGER")
    diff = schema_diff(db_url)
    assert any(d[0] == "remove_column" and d[3].name == "surprise" for d in diff), diff


def test_a_store_creates_the_schema_at_head_in_an_empty_database(db_url):
    SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4)).close()
    engine = create_store_engine(db_url)
    try:
        assert schema.database_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()
    assert schema_diff(db_url) == []


# -- (b) upgrade -> downgrade -> upgrade ----------------------------------------


def test_upgrade_downgrade_upgrade_round_trip(db_url, engine):
    schema.upgrade(engine)
    schema.downgrade(engine, "base")
    assert schema.database_revision(engine) is None
    assert table_names(db_url) - {schema.VERSION_TABLE} == set()
    schema.upgrade(engine)
    assert schema.database_revision(engine) == schema.head_revision()
    assert schema_diff(db_url) == []
    # And the rebuilt schema works.
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4), create=False)
    try:
        store.record_trajectories(make_trajectories(12, 8))
        assert store.run_cycle().trajectories_processed == 12
    finally:
        store.close()


def test_upgrade_twice_is_a_no_op(db_url, engine):
    schema.upgrade(engine)
    schema.upgrade(engine)
    assert schema.database_revision(engine) == schema.head_revision()
    assert schema_diff(db_url) == []


# -- (c) revisions other than this version's head --------------------------------


def test_empty_database_without_create_is_refused_and_left_empty(db_url):
    with pytest.raises(SchemaVersionError) as info:
        SonaStore(db_url, create=False)
    message = str(info.value)
    assert "sona-store" in message and "db upgrade" in message
    assert table_names(db_url) == set()


def test_database_from_a_newer_release_is_refused(db_url):
    SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4)).close()
    execute(db_url, f"UPDATE {schema.VERSION_TABLE} SET version_num = 'ffff_future'")
    before = row_counts(db_url)
    for create in (True, False):
        with pytest.raises(SchemaVersionError) as info:
            SonaStore(db_url, create=create)
        message = str(info.value)
        assert "ffff_future" in message
        assert "upgrade the sona-store package" in message
    assert row_counts(db_url) == before


def test_migrating_a_database_from_a_newer_release_is_refused(db_url, engine):
    """`db upgrade` cannot run migrations it does not have: it says so instead of
    leaving alembic's error (and the database) half handled."""
    schema.upgrade(engine)
    execute(db_url, f"UPDATE {schema.VERSION_TABLE} SET version_num = 'ffff_future'")
    for migrate in (lambda: schema.upgrade(engine), lambda: schema.downgrade(engine, "base")):
        with pytest.raises(SchemaVersionError, match="upgrade the sona-store package"):
            migrate()
    assert schema.database_revision(engine) == "ffff_future"
    assert table_names(db_url) == MODEL_TABLES | {schema.VERSION_TABLE}


def test_migrating_to_an_unknown_revision_is_a_schema_error(db_url, engine):
    with pytest.raises(SchemaVersionError, match="nonsense"):
        schema.upgrade(engine, "nonsense")
    assert table_names(db_url) - {schema.VERSION_TABLE} == set()
    schema.upgrade(engine)
    with pytest.raises(SchemaVersionError, match="nonsense"):
        schema.downgrade(engine, "nonsense")
    assert schema.database_revision(engine) == schema.head_revision()


def test_database_at_the_previous_shipped_revision_is_refused(db_url, engine):
    """A real older revision of this package's own migrations, when it has one."""
    script = ScriptDirectory.from_config(schema.alembic_config())
    head = script.get_revision(schema.head_revision())
    if head.down_revision is None:
        pytest.skip("only one revision ships: covered by the next-release test below")
    previous = head.down_revision
    assert isinstance(previous, str)
    schema.upgrade(engine, previous)
    for create in (True, False):
        with pytest.raises(SchemaVersionError) as info:
            SonaStore(db_url, create=create)
        message = str(info.value)
        assert previous in message and head.revision in message
        assert "sona-store" in message and "db upgrade" in message
    assert schema.database_revision(engine) == previous
    with engine.connect() as conn:  # nothing initialised (the older schema may lack tables)
        assert conn.execute(sa.text("SELECT count(*) FROM store_settings")).scalar_one() == 0
    schema.upgrade(engine)
    SonaStore(db_url, create=False).close()
    assert schema_diff(db_url) == []


NEXT_REVISION = "9999_next"


def next_release_migrations(tmp_path: Path) -> Path:
    """This package's migrations plus one more revision: what the next release
    would ship."""
    migrations = tmp_path / "next_release_migrations"
    shutil.copytree(
        schema.migrations_dir(), migrations, ignore=shutil.ignore_patterns("__pycache__")
    )
    (migrations / "versions" / f"{NEXT_REVISION}.py").write_text(
        '"""A later release\'s revision."""\n\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f"revision = {NEXT_REVISION!r}\n"
        f"down_revision = {schema.head_revision()!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade():\n"
        '    op.create_table("next_release", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        "def downgrade():\n"
        '    op.drop_table("next_release")\n'
    )
    return migrations


def test_database_at_an_older_revision_is_refused_naming_db_upgrade(
    db_url, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A store made by this release ...
    old_revision = schema.head_revision()
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4))
    store.record_trajectories(make_trajectories(12, 8))
    store.run_cycle()
    store.close()
    before = row_counts(db_url)
    # ... opened by the next one: refused, naming the command that fixes it.
    next_release = next_release_migrations(tmp_path)
    monkeypatch.setattr(schema, "migrations_dir", lambda: next_release)
    assert schema.head_revision() == NEXT_REVISION
    for create in (True, False):
        with pytest.raises(SchemaVersionError) as info:
            SonaStore(db_url, create=create)
        message = str(info.value)
        assert old_revision in message and NEXT_REVISION in message
        assert "sona-store" in message and "db upgrade" in message
    assert row_counts(db_url) == before
    assert "next_release" not in table_names(db_url)
    # Following the advice fixes it, keeping the data.
    engine = create_store_engine(db_url)
    try:
        schema.upgrade(engine)
        assert schema.database_revision(engine) == NEXT_REVISION
    finally:
        engine.dispose()
    store = SonaStore(db_url, create=False)
    try:
        assert store.config.hidden_dim == 8
        assert store.stats()["trajectories_recorded"] == 12
    finally:
        store.close()
    assert row_counts(db_url) == before
    # And back down to this release's revision, data kept.
    engine = create_store_engine(db_url)
    try:
        schema.downgrade(engine, old_revision)
        assert schema.database_revision(engine) == old_revision
    finally:
        engine.dispose()
    assert "next_release" not in table_names(db_url)
    assert row_counts(db_url) == before


# -- (d) dimensions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "other"),
    [
        ("hidden_dim", {"hidden_dim": 16}),
        ("embedding_dim", {"hidden_dim": 8, "embedding_dim": 4}),
        ("micro_lora_rank", {"hidden_dim": 8, "micro_lora_rank": 1}),
        ("base_lora_rank", {"hidden_dim": 8, "base_lora_rank": 4}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_other_dimensions_are_refused_and_nothing_is_written(db_url, changed, other):
    created = SonaConfig(hidden_dim=8, pattern_clusters=4)
    store = SonaStore(db_url, created)
    try:
        store.record_trajectories(make_trajectories(12, 8))
        store.run_cycle()
    finally:
        store.close()
    before = row_counts(db_url)
    engine = create_store_engine(db_url)
    try:
        with engine.connect() as conn:
            settings_before = conn.execute(sa.text("SELECT config FROM store_settings")).all()
    finally:
        engine.dispose()

    with pytest.raises(ConfigError) as info:
        SonaStore(db_url, SonaConfig(pattern_clusters=4, **other))
    assert changed in str(info.value)

    assert row_counts(db_url) == before
    engine = create_store_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT config FROM store_settings")).all() == (
                settings_before
            )
    finally:
        engine.dispose()
    reopened = SonaStore(db_url)
    try:
        assert reopened.config == created
    finally:
        reopened.close()


# -- (e) not made by our migrations ------------------------------------------------


def test_sona_tables_without_version_table_are_refused(db_url):
    engine = create_store_engine(db_url)
    try:
        Base.metadata.create_all(engine)  # someone bypassed the migrations
    finally:
        engine.dispose()
    for create in (True, False):
        with pytest.raises(SchemaVersionError) as info:
            SonaStore(db_url, create=create)
        assert schema.VERSION_TABLE in str(info.value)
    assert schema.VERSION_TABLE not in table_names(db_url)
    assert row_counts(db_url)["store_settings"] == 0


def test_store_whose_version_table_was_dropped_is_refused(db_url):
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4))
    store.record_trajectories(make_trajectories(3, 8))
    store.close()
    execute(db_url, f"DROP TABLE {schema.VERSION_TABLE}")
    before = row_counts(db_url)
    with pytest.raises(SchemaVersionError, match=schema.VERSION_TABLE):
        SonaStore(db_url)
    assert row_counts(db_url) == before


def test_unrelated_tables_do_not_stop_a_new_store(db_url):
    """A database shared with other applications' tables is still 'empty' to us."""
    execute(db_url, "CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)")
    store = SonaStore(db_url, SonaConfig(hidden_dim=8, pattern_clusters=4))
    store.close()
    assert table_names(db_url) == MODEL_TABLES | {schema.VERSION_TABLE, "someone_elses"}
    ours = [
        d
        for d in schema_diff(db_url)
        if not (d[0] == "remove_table" and d[1].name == "someone_elses")
    ]
    assert ours == []


# -- concurrent first opens ----------------------------------------------------------


def test_concurrent_first_opens_make_one_store(db_url):
    """Replicas starting together on an empty database: every one opens it, and
    there is one configuration and one initial state."""
    config = SonaConfig(hidden_dim=8, pattern_clusters=4)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            barrier.wait(timeout=60)
            SonaStore(db_url, config).close()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    counts = row_counts(db_url)
    assert counts["store_settings"] == 1
    assert counts["store_head"] == 1
    assert schema_diff(db_url) == []
