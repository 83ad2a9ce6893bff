"""What every dialect does around the service: race the work against the client's disconnect,
open streams so that errors before the first token still get a proper status, and observe
metrics when a request ends, whatever way it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request

from chatforge.api.disconnect import ClientDisconnected, until_disconnect
from chatforge.api.metrics import Metrics
from chatforge.service.chat import ChatService, PreparedChat
from chatforge.service.errors import ChatError
from chatforge.service.protocol import ChatEvent, ChatRequest, ChatResult


class Serving:
    def __init__(self, service: ChatService, metrics: Metrics):
        self.service = service
        self.metrics = metrics

    def prepare(self, dialect: str, req: ChatRequest) -> PreparedChat:
        try:
            return self.service.prepare(req)
        except ChatError as e:
            self.metrics.observe_refused(dialect, req.model or "", str(e.status))
            raise

    async def complete(self, request: Request, dialect: str, prep: PreparedChat) -> ChatResult:
        status = "500"
        try:
            result = await until_disconnect(request, self.service.complete(prep))
            status = "200"
            return result
        except ClientDisconnected:
            status = "aborted"
            raise
        except ChatError as e:
            status = str(e.status)
            raise
        finally:
            self.metrics.observe(dialect, prep, status)

    async def open_stream(self, dialect: str, prep: PreparedChat) -> AsyncIterator[ChatEvent]:
        """Starts the stream and waits for its first event (so overload or any early error is
        an ordinary error response), then returns an iterator over all events."""
        events = self.service.stream(prep)
        try:
            first = await anext(events)
        except BaseException as e:
            await events.aclose()
            self.metrics.observe(dialect, prep, str(getattr(e, "status", 500)))
            raise
        return self._rest(dialect, prep, first, events)

    async def _rest(self, dialect: str, prep: PreparedChat, first: ChatEvent, events: AsyncIterator[ChatEvent]):
        status = "500"
        try:
            yield first
            async for event in events:
                yield event
            status = "200"
        except (asyncio.CancelledError, GeneratorExit):
            status = "aborted"
            raise
        finally:
            await events.aclose()
            self.metrics.observe(dialect, prep, status)
