"""Schema migrations (Alembic), applied from code: `await upgrade(url)` at server start and by
every CLI command, so a fresh SQLite file or an empty PostgreSQL database becomes usable at once.

The scripts live in `versions/` and ship inside the package. To write the next one against a
database at the current head: `await autogenerate(url, "what changed")`, then read and edit it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from chatforge.platform.db import create_engine, is_sqlite, normalize_url

HERE = Path(__file__).parent
VERSION_TABLE = "chatforge_schema_version"
# Any constant: serialises gateways that migrate one PostgreSQL database at the same moment.
_PG_LOCK_ID = 0x63666F7267

__all__ = ["VERSION_TABLE", "autogenerate", "current_revision", "upgrade"]


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(url: str | URL, revision: str = "head") -> None:
    """Apply every migration up to `revision` on the database at `url`."""
    url = normalize_url(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            if not is_sqlite(url):
                await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
            await conn.run_sync(lambda sync: command.upgrade(_config(sync), revision))
    finally:
        await engine.dispose()


async def current_revision(url: str | URL) -> str | None:
    """The revision the database is at; None for an empty database."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(
                    sync, opts={"version_table": VERSION_TABLE}
                ).get_current_revision()
            )
    finally:
        await engine.dispose()


async def autogenerate(url: str | URL, message: str) -> None:
    """Write a new revision script from the difference between `tables.py` and the database."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.revision(_config(sync), message=message, autogenerate=True))
    finally:
        await engine.dispose()
