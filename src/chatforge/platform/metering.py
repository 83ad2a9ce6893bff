"""Metering: one usage row per request, finished, failed or aborted, with its estimated cost
(computed once, by the service from the model's price, and carried in the record as the
response's `usage` said it), and one per request refused by a rate limit (no tokens, no cost),
so refusals are counted per account and over time like the rest.

`UsageWriter.submit` only queues the row, without awaiting anything, so a request handler can
call it from a `finally` even while its task is being cancelled because the client went away; a
background task writes the queue in batches (one transaction per batch). `flush()` waits for
everything queued so far; `close()` flushes and stops. Rows carry token counts, never text.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncEngine

from chatforge.platform import tables as t
from chatforge.platform.errors import InvalidInputError

log = logging.getLogger(__name__)


class UsageStatus(StrEnum):
    COMPLETED = "completed"  # answered in full (any finish reason)
    ABORTED = "aborted"  # the client went away, or the server shut down mid-request
    FAILED = "failed"  # an error after the model was reached
    RATE_LIMITED = "rate_limited"  # refused by a rate limit before reaching a model: no tokens, no cost


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    model: str  # the canonical model id
    dialect: str  # "openai", "infomaniak", "egp", ...
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from receipt to the last byte (or the abort)
    status: UsageStatus
    estimated_cost: float = 0.0  # USD, the figure the response's usage carried
    key_id: int | None = None  # None in open mode
    account_id: int | None = None  # the account billed: the product's or deployment's owner
    product_id: int | None = None
    deployment_id: str | None = None
    created_at: datetime = field(default_factory=t.utcnow)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", UsageStatus(self.status))
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise InvalidInputError("token counts cannot be negative")
        if self.estimated_cost < 0:
            raise InvalidInputError("a cost cannot be negative")


class UsageWriter:
    def __init__(self, engine: AsyncEngine, *, batch_size: int = 256, max_queued: int = 100_000,
                 retries: int = 3) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._retries = retries
        self._queue: asyncio.Queue[dict] = asyncio.Queue(max_queued)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="chatforge-usage-writer")

    def submit(self, record: UsageRecord) -> None:
        """Queue the row; never waits."""
        row = asdict(record) | {"status": record.status.value}
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            log.error("usage queue full (%d rows): dropped the row of request %s",
                      self._queue.maxsize, record.request_id)

    async def flush(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        if self._task is None:
            return
        await self.flush()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[dict]) -> None:
        for attempt in range(self._retries + 1):
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(t.usage.insert(), batch)
                return
            except Exception as exc:  # noqa: BLE001 - the writer must outlive a database outage
                if attempt == self._retries:
                    log.error("dropped %d usage rows after %d attempts: %s", len(batch), attempt + 1,
                              type(exc).__name__)
                    return
                await asyncio.sleep(0.25 * 2**attempt)
