"""The platform's policy when a store goes away, in one place.

- The database (PostgreSQL, or the SQLite file) unreachable: every read on the request path
  (keys, products, deployments, open mode) raises StorageUnavailableError, so a request is
  answered 503 with `Retry-After` in its dialect's envelope. Nothing is admitted without its key
  being checked, and open mode is never entered for want of an answer. Usage rows wait in a
  bounded buffer (usage_buffer.py) and are written when the database is back.
- Redis unreachable (with `--redis-url`): rate_limit_failover.py, per `storage.redis_unavailable`.

Recovery needs no restart: the connection pool pings before use and each call tries again.
`StoreHealth` tracks whether a store answered last time, logs each transition once (not every
failing request), and feeds the `chatforge_storage_up` gauge.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatforge.platform.errors import StorageUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What an unreachable, restarting or locked database raises (sqlite's "database is locked" and
# "unable to open database file" are OperationalErrors too). Anything else is a bug, not an outage.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
    ConnectionError, TimeoutError, OSError,
)


class StoreHealth:
    """Whether a store answered its last call; transitions are logged once each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.outages = 0  # times it went down since start

    def failed(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self.outages += 1
            log.error("%s unavailable (%s); failing closed until it answers again", self.name, type(exc).__name__)

    def answered(self) -> None:
        if not self.up:
            self.up = True
            log.warning("%s reachable again", self.name)


async def read(engine: AsyncEngine, health: StoreHealth, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """`work(conn)` on a connection of `engine`; an outage becomes StorageUnavailableError."""
    try:
        async with engine.connect() as conn:
            result = await work(conn)
    except OUTAGE_ERRORS as exc:
        health.failed(exc)
        raise StorageUnavailableError() from exc
    health.answered()
    return result
