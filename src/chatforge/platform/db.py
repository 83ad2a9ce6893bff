"""Database URLs and the async SQLAlchemy engine.

Users write `sqlite:///PATH` or `postgresql://USER@HOST:PORT/DB`; SQLAlchemy needs the async
drivers named (`sqlite+aiosqlite`, `postgresql+psycopg`). SQLite runs in WAL mode with
`synchronous=NORMAL` (a commit costs ~0.1 ms instead of ~5 ms of fsync) and a busy timeout, so a
CLI process can write while a server holds the file open.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chatforge.platform.errors import InvalidInputError

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+psycopg"

_DRIVERS = {
    "sqlite": SQLITE_DRIVER,
    SQLITE_DRIVER: SQLITE_DRIVER,
    "postgresql": POSTGRES_DRIVER,
    "postgres": POSTGRES_DRIVER,
    POSTGRES_DRIVER: POSTGRES_DRIVER,
}

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_CONNECT_TIMEOUT_S = 5
_POOL_TIMEOUT_S = 10


def normalize_url(url: str | URL) -> URL:
    """The async-driver form of a user's database URL; any other scheme is refused."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInputError(f"not a database URL: {url!r} (use sqlite:///PATH or postgresql://...)") from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise InvalidInputError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        )
    if driver == POSTGRES_DRIVER and not parsed.database:
        raise InvalidInputError("a postgresql URL must name the database: postgresql://USER@HOST:PORT/DB")
    return parsed.set(drivername=driver)


def is_sqlite(url: URL) -> bool:
    return url.drivername == SQLITE_DRIVER


def create_engine(url: str | URL) -> AsyncEngine:
    """An async engine for `url` (normalised first); the caller disposes of it."""
    url = normalize_url(url)
    if not is_sqlite(url):
        # A database that does not answer must fail a request within seconds, not hold it:
        # libpq waits forever to connect by default, the pool 30 s for a free connection.
        return create_async_engine(url, pool_pre_ping=True, pool_timeout=_POOL_TIMEOUT_S,
                                   connect_args={"connect_timeout": _CONNECT_TIMEOUT_S})
    if url.database in (None, "", ":memory:"):
        # NOTE: each new connection to ":memory:" is a new empty database; share one.
        engine = create_async_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
