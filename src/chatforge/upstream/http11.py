"""A lean HTTP/1.1 client for the chatforge node protocol: kept-alive connections to one node, one
request at a time on each, the response body as it arrives.

Why not httpx, which the other clients use: a streamed request through httpx, httpcore, anyio and
h11 cost the gateway about 1.5-1.9 ms of CPU on this project's 2-core machine (some 1,400 Python
calls), against 0.3 ms here, where uvicorn's own C parser (httptools) reads the response. The hop
to a node is on every request's path; this is most of what a gateway adds to it.

- A connection is reused only after its response was read to the end; a response given up part
  way closes its connection, which is how a node learns that the gateway went away.
- A request that fails on a reused connection before a byte of its answer arrived is sent once
  more on a new one (the node may have closed the connection as it idled); idle connections are
  dropped after `idle_s`, shorter than a node's keep-alive timeout.
- `silence_s`: a response with no byte for that long fails with `TimeoutError` (nodes send a
  heartbeat every second).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools


class NodeConnectionError(ConnectionError):
    """The node could not be reached, or the connection dropped."""


class Response:
    def __init__(self, connection: _Connection, silence_s: float | None):
        self.status = 0
        self._connection = connection
        self._loop = connection.loop
        self._silence_s = silence_s
        self._timer: asyncio.TimerHandle | None = None
        self._headers: asyncio.Future = self._loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._done = False
        self._keep_alive = False
        self.received = False  # a byte of the answer arrived
        self._arm()

    # -- from the connection ---------------------------------------------------------------

    def _arm(self) -> None:
        if self._silence_s is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(self._silence_s, self._silent)

    def _silent(self) -> None:
        self._fail(TimeoutError(f"no byte from the node for {self._silence_s} s"))
        self._connection.close()

    def _headers_done(self, status: int) -> None:
        self.status = status
        if not self._headers.done():
            self._headers.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        self._done, self._keep_alive = True, keep_alive
        if self._timer is not None:
            self._timer.cancel()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        if self._timer is not None:
            self._timer.cancel()
        if not self._headers.done():
            self._headers.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- for the caller --------------------------------------------------------------------

    async def _next(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._chunks.popleft()

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split at newlines (without them), as it arrives."""
        pending = b""
        while (chunk := await self._next()) is not None:
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                yield line
        if pending:
            yield pending

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back when the answer was read whole; otherwise close it."""
        if self._timer is not None:
            self._timer.cancel()
        self._connection.finished(self._done and self._keep_alive and self._error is None)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Http11Pool):
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.response: Response | None = None
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None:
            self.response._fail(NodeConnectionError(f"the connection to {self.pool.origin} was lost"))

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing was asked: a broken peer
            self.close()
            return
        response.received = True
        response._arm()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            response._fail(NodeConnectionError(f"a malformed answer from {self.pool.origin}: {e}"))
            self.close()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.response._headers_done(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)

    def on_message_complete(self) -> None:
        self.response._complete(self.parser.should_keep_alive())

    def send(self, request: bytes, silence_s: float | None) -> Response:
        self.parser = httptools.HttpResponseParser(self)
        self.response = Response(self, silence_s)
        self.transport.write(request)
        return self.response

    def finished(self, reusable: bool) -> None:
        self.response = None
        if reusable and not self.lost:
            self.idle_since = time.monotonic()
            self.pool.idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Http11Pool:
    """Connections to one origin (`http://host:port[/prefix]` or https)."""

    def __init__(self, url: str, *, connect_timeout_s: float, idle_s: float = 4.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self.idle: list[_Connection] = []
        self._host_header = parts.netloc.encode()

    async def post(self, path: str, body: bytes, headers: dict[str, str], silence_s: float | None) -> Response:
        """Send the request and wait for the answer's status line and headers."""
        head = [f"POST {self.prefix}{path} HTTP/1.1", f"host: {self._host_header.decode()}",
                f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        while True:
            connection, reused = await self._connection()
            response = connection.send(request, silence_s)
            try:
                await response._headers
                return response
            except NodeConnectionError:
                response.release()
                if reused and not response.received:
                    continue  # the node closed it while it idled: a new connection
                raise
            except BaseException:
                response.release()
                raise

    async def _connection(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if not connection.lost and now - connection.idle_since < self.idle_s:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                                       server_hostname=self.host if self.ssl else None),
                self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise NodeConnectionError(f"cannot connect to {self.origin} ({type(e).__name__})") from e
        return connection, False

    async def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
