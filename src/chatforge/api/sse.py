"""Server-sent events, written by hand: the same POST answers JSON or SSE depending on `stream`.

A stream's buffer is bounded: the server's `send` waits whenever the connection's write buffer
is above its high-water mark (64 KiB, or `server.stream_buffer_bytes`, which pins the kernel's
send buffer too), so a client that stops reading holds that much and no more. A send that waits longer than the
stall timeout (watched by api/stall.py) ends the stream: the body iterator is closed (its request
is aborted, its KV blocks freed, its usage row written) and the server closes the connection.

A stream writes a frame per token, so a frame costs little: the chunks that carry nothing but
the next text are written from a template (TextFrame), and no timer is set per send.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from json.encoder import encode_basestring
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Send

from chatforge.api.stall import StallWatch

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_data(payload: Any) -> bytes:
    text = payload if isinstance(payload, str) else _dumps(payload)
    return f"data: {text}\n\n".encode()


def data_frames(payloads: Iterable[Any]) -> list[bytes]:
    return [sse_data(p) for p in payloads]


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


# Marks the varying string of a TextFrame's object; NUL characters keep it out of real text.
TEXT_SLOT = "\x00chatforge-text-slot\x00"


class TextFrame:
    """The `data:` frames of one JSON object that vary in a single string (a stream's text
    deltas): the object is serialized once, with TEXT_SLOT where the string goes, and each
    frame is the two fixed halves around the string's JSON. Byte for byte what `sse_data`
    writes for the whole object (the same encoder escapes the string), at the cost of one
    string escape per token instead of a dict built and serialized."""

    def __init__(self, head: str, tail: str):
        self._head = "data: " + head
        self._tail = tail + "\n\n"

    @classmethod
    def of(cls, payload: Any) -> TextFrame | None:
        """The template of `payload`; None unless it holds TEXT_SLOT exactly once (a caller's
        own text, a prompt echoed in every object, might hold it too)."""
        head, slot, tail = _dumps(payload).partition(_dumps(TEXT_SLOT))
        return cls(head, tail) if slot and slot not in tail else None

    def __call__(self, text: str) -> bytes:
        return (self._head + encode_basestring(text) + self._tail).encode()


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
        watch = StallWatch(asyncio.current_task(), self.stall_timeout_s)
        try:
            async with aclosing(self.body_iterator) as chunks:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in chunks:
                    if not await self._send(send, watch, chunk, more=True):
                        return
            await self._send(send, watch, b"", more=False)
        finally:
            watch.close()

    async def _send(self, send: Send, watch: StallWatch, chunk: bytes, more: bool) -> bool:
        """Send one chunk; False (and `on_stall`) when the reader took nothing for the stall timeout."""
        watch.begin()
        try:
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except asyncio.CancelledError:
            if not watch.uncancel():
                raise
            # NOTE: returning with the response incomplete is the one way ASGI has to make the
            # server drop the connection (uvicorn logs that it did).
            self.on_stall()
            return False
        finally:
            watch.end()
        return True


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None, *,
                 stall_timeout_s: float = 30.0, on_stall: Callable[[], None] = lambda: None) -> StreamingResponse:
    return StallBoundedResponse(body, stall_timeout_s=stall_timeout_s, on_stall=on_stall,
                                headers={**SSE_HEADERS, **(headers or {})}, media_type="text/event-stream")
