"""Server-sent events, written by hand: the same POST answers JSON or SSE depending on `stream`.

A stream's buffer is bounded: the server's `send` waits whenever the connection's write buffer
is above its high-water mark (64 KiB, or `server.stream_buffer_bytes`, which pins the kernel's
send buffer too), so a client that stops reading holds that much and no more. A send that waits longer than the
stall timeout ends the stream: the body iterator is closed (its request is aborted, its KV blocks
freed, its usage row written) and the server closes the connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_data(payload: Any) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def sse_event(event: str, payload: Any) -> bytes:
    return f"event: {event}\n".encode() + sse_data(payload)


class StallBoundedResponse(StreamingResponse):
    """A streaming response that gives up on a reader who takes nothing for `stall_timeout_s`."""

    def __init__(self, body: AsyncIterator[bytes], *, stall_timeout_s: float, on_stall: Callable[[], None],
                 headers: dict[str, str] | None = None, media_type: str | None = None):
        super().__init__(body, headers=headers, media_type=media_type)
        self.stall_timeout_s = stall_timeout_s
        self.on_stall = on_stall

    async def stream_response(self, send: Send) -> None:
        async with aclosing(self.body_iterator) as chunks:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in chunks:
                if not await self._send(send, chunk, more=True):
                    return
        await self._send(send, b"", more=False)

    async def _send(self, send: Send, chunk: bytes, more: bool) -> bool:
        """Send one chunk; False (and `on_stall`) when the reader took nothing for the stall timeout."""
        stall = asyncio.timeout(self.stall_timeout_s)
        try:
            async with stall:
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except TimeoutError:
            if not stall.expired():
                raise
            # NOTE: returning with the response incomplete is the one way ASGI has to make the
            # server drop the connection (uvicorn logs that it did).
            self.on_stall()
            return False
        return True


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None, *,
                 stall_timeout_s: float = 30.0, on_stall: Callable[[], None] = lambda: None) -> StreamingResponse:
    return StallBoundedResponse(body, stall_timeout_s=stall_timeout_s, on_stall=on_stall,
                                headers={**SSE_HEADERS, **(headers or {})}, media_type="text/event-stream")
