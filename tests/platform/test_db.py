from __future__ import annotations

import pytest
from sqlalchemy import text

from chatforge.platform.db import create_engine, normalize_url
from chatforge.platform.errors import InvalidInputError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///./chatforge.db", "sqlite+aiosqlite:///./chatforge.db"),
        ("sqlite:////var/lib/chatforge/db.sqlite", "sqlite+aiosqlite:////var/lib/chatforge/db.sqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://cf@db.internal:5432/chatforge", "postgresql+psycopg://cf@db.internal:5432/chatforge"),
        ("postgres://cf@127.0.0.1:5433/chatforge", "postgresql+psycopg://cf@127.0.0.1:5433/chatforge"),
        ("postgresql+psycopg://cf@h:1/d", "postgresql+psycopg://cf@h:1/d"),
    ],
)
def test_urls_get_their_async_driver(given, expected):
    assert normalize_url(given).render_as_string(hide_password=False) == expected


def test_password_survives_normalisation():
    url = normalize_url("postgresql://cf:s3cret@h:5432/d")
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg", "cf", "s3cret", "h", 5432, "d")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mysql://u@h/d", "unsupported database 'mysql'"),
        ("postgresql://u@h:5432", "must name the database"),
        ("not a url", "not a database URL"),
    ],
)
def test_bad_urls_are_typed_errors(given, message):
    with pytest.raises(InvalidInputError, match=message):
        normalize_url(given)


async def test_sqlite_runs_in_wal_with_normal_sync(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
            synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
            foreign_keys = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
    finally:
        await engine.dispose()
    # synchronous: 1 = NORMAL
    assert (journal, synchronous, foreign_keys) == ("wal", 1, 1)


async def test_in_memory_sqlite_is_one_shared_database():
    engine = create_engine("sqlite:///:memory:")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (7)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalar_one() == 7
    finally:
        await engine.dispose()
