"""Alembic's entry point. It runs only on a connection handed over by `migrations.upgrade()` and
friends (config.attributes["connection"]): there is no alembic.ini and no URL of its own."""

from __future__ import annotations

from alembic import context

from chatforge.platform.migrations import VERSION_TABLE
from chatforge.platform.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run chatforge's migrations through chatforge.platform.migrations.upgrade(url)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things in place: later migrations copy the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
