"""Usage rows on their way to the database: a bounded buffer, written in batches, held through
an outage.

`submit` only appends, without awaiting anything, so a request handler can call it from a
`finally` even while its task is being cancelled because the client went away. A background task
writes the oldest rows, one transaction per batch. While the database is unreachable the rows
stay in the buffer and the batch is retried (backing off to a few seconds), so none is lost
while the buffer holds; a row that arrives when the buffer is full is dropped and counted. A
batch the database refuses for another reason (a bug, not an outage) is written row by row,
and only the rows it refuses are dropped, counted and logged. Rows carry counts, never text.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import asdict
from itertools import islice

from sqlalchemy.ext.asyncio import AsyncEngine

from chatforge.platform import tables as t
from chatforge.platform.metering import UsageRecord
from chatforge.platform.storage import OUTAGE_ERRORS, StoreHealth

log = logging.getLogger(__name__)

_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 2.0


class UsageBuffer:
    def __init__(self, engine: AsyncEngine, health: StoreHealth | None = None, *, capacity: int = 10_000,
                 batch_size: int = 256) -> None:
        self._engine = engine
        self._health = health or StoreHealth("database")
        self.capacity = capacity
        self._batch_size = batch_size
        self._rows: deque[dict] = deque()
        self._wake = asyncio.Event()  # rows arrived
        self._progress = asyncio.Event()  # rows left the buffer
        self._task: asyncio.Task | None = None
        self.accepted = 0  # rows taken into the buffer
        self.done = 0  # of those, written or given up
        self.dropped = 0  # rows lost: the buffer was full, the database refused them, or shutdown came first

    @property
    def pending(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="chatforge-usage-buffer")

    def submit(self, record: UsageRecord) -> None:
        """Buffer the row; never waits."""
        if len(self._rows) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage buffer full (%d rows): dropped the row of request %s (%d dropped so far)",
                          self.capacity, record.request_id, self.dropped)
            return
        self._rows.append(asdict(record) | {"status": record.status.value})
        self.accepted += 1
        self._wake.set()

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every row buffered so far is written (or given up); False on timeout."""
        target = self.accepted
        try:
            async with asyncio.timeout(timeout_s):
                while self.done < target:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float | None = None) -> None:
        """Flush (for up to `timeout_s`), then stop; rows still unwritten are counted as dropped."""
        if self._task is None:
            return
        flushed = await self.flush(timeout_s)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if not flushed and self._rows:
            self.dropped += len(self._rows)
            log.error("shutdown: %d usage rows could not be written (the database is unavailable)", len(self._rows))

    async def _run(self) -> None:
        backoff = 0.0
        careful = 0  # rows to write one by one: a batch was refused, find the rows it was refused for
        while True:
            if not self._rows:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(islice(self._rows, 1 if careful else self._batch_size))
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(t.usage.insert(), batch)
            except OUTAGE_ERRORS as exc:
                self._health.failed(exc)
                backoff = min(_BACKOFF_MAX_S, max(_BACKOFF_FIRST_S, backoff * 2))
                await asyncio.sleep(backoff)
                continue
            except Exception as exc:  # noqa: BLE001 - a refused row must not block the rows behind it
                if len(batch) > 1:
                    careful = len(batch)
                    continue
                self.dropped += 1
                log.error("the database refused the usage row of request %s: %s", batch[0]["request_id"],
                          type(exc).__name__)
            else:
                self._health.answered()
                backoff = 0.0
            careful = max(0, careful - len(batch))
            for _ in batch:
                self._rows.popleft()
            self.done += len(batch)
            self._progress.set()
