from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from chatforge.platform.db import create_engine
from chatforge.platform.migrations import VERSION_TABLE, current_revision, upgrade
from chatforge.platform.tables import metadata

TABLES = {"accounts", "api_keys", "api_key_accounts", "products", "deployments", "usage", VERSION_TABLE}


async def test_migrations_build_exactly_the_declared_schema_on_an_empty_database(empty_database_url):
    database_url = empty_database_url
    assert await current_revision(database_url) is None
    await upgrade(database_url)
    assert await current_revision(database_url) == "0002"

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True, "version_table": VERSION_TABLE}),
                    metadata,
                )
            )
    finally:
        await engine.dispose()
    assert names == TABLES
    assert diff == []


async def test_upgrading_twice_changes_nothing(database_url):
    await upgrade(database_url)
    await upgrade(database_url)
    assert await current_revision(database_url) == "0002"


def test_migration_scripts_ship_inside_the_package():
    from chatforge.platform import migrations

    assert sorted(p.name for p in (migrations.HERE / "versions").glob("0*.py")) == ["0001_initial.py", "0002_usage_request_id.py"]
    assert (migrations.HERE / "script.py.mako").is_file()
