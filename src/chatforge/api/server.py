"""The HTTP server: uvicorn, with chatforge owning the shutdown sequence and the connection bounds.

uvicorn alone, on SIGTERM, closes its listening sockets at once (a late client is refused, not
told to retry), then waits for every open connection, which a stream can hold for as long as it
generates, and afterwards re-raises the signal, so the process dies by it rather than exiting 0.
Here the first SIGTERM or SIGINT starts the drain (api/drain.py) while the server keeps
accepting, so late requests get 503 with `Retry-After` in their dialect and `/health` says
`draining`; when the drain is over uvicorn's own shutdown runs (sockets closed, idle connections
closed, the app's lifespan: rate-limit settlements awaited, usage rows written, the database
closed) and the process exits 0. A second signal ends it at once (exit status 1): every
connection is closed, so each request still running ends as an abort (as when its client goes),
and the process exits without waiting for anything more; rows still buffered are lost.

uvicorn (with httptools) bounds neither how long a client may take to send its request line and
headers nor how large they may be; `BoundedHeaders` does both (408, 431). Idle keep-alive
connections close after `server.keep_alive_timeout_s` (uvicorn's own timer). What a slow
reader may hold per connection can be pinned (`server.stream_buffer_bytes`: the write buffer's
high-water mark, past which uvicorn's `send` waits, and the kernel's send buffer), which also
makes a stalled stream show itself sooner (api/sse.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatforge.settings import ServerConfig

log = logging.getLogger("chatforge.server")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After the drain, how long uvicorn waits for connections still open before cancelling them.
_CONNECTIONS_GRACE_S = 5
# After a second signal, the longest the process may take to go; then it is ended outright.
_FORCED_EXIT_S = 5.0
# After a second signal, how long the requests whose connections were closed get to end.
_FORCED_REQUESTS_END_S = 2.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[object]]):
        super().__init__(config)
        self._drain = drain
        self._drain_task: asyncio.Task | None = None
        self.signalled = 0  # signals received
        self.forced = False

    def handle_exit(self, sig: int, frame) -> None:
        # NOTE: a signal handler may run in the middle of anything, logging's locks included:
        # it only sets flags, and the main loop acts on them within 0.1 s (on_tick).
        self.signalled += 1
        if self.signalled > 1:
            self.forced = self.force_exit = self.should_exit = True
            timer = threading.Timer(_FORCED_EXIT_S, os._exit, (1,))
            timer.daemon = True
            timer.start()

    async def on_tick(self, counter: int) -> bool:
        if self.signalled and self._drain_task is None and not self.forced:
            log.info("shutdown requested: draining")
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="chatforge-drain")
        if self._drain_task is not None and self._drain_task.done():
            if not self._drain_task.cancelled() and self._drain_task.exception() is not None:
                log.error("the drain failed", exc_info=self._drain_task.exception())
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.forced:
            await super().shutdown(sockets)
            return
        # Close every connection first: each request then sees its client gone and ends as an
        # abort, as on any disconnect. Left running, it would be cancelled when the event loop
        # closes, which uvicorn logs as an error with a traceback, one per request.
        connections = list(self.server_state.connections)
        log.warning("second signal: stopping at once, closing %d connections (usage rows not yet written are lost)",
                    len(connections))
        for connection in connections:
            connection.transport.close()
        await super().shutdown(sockets)
        deadline = time.monotonic() + _FORCED_REQUESTS_END_S
        while self.server_state.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # Out now, without the app's shutdown (it waits for the usage rows' database) and before
        # the event loop cancels what is left (the lifespan: uvicorn logs that with a traceback).
        logging.shutdown()  # flushes the log
        os._exit(1)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, without re-raising the signal after the shutdown (the exit stays 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def bounded_headers_protocol(header_timeout_s: float, max_header_bytes: int, stream_buffer_bytes: int | None):
    """uvicorn's httptools protocol, with a deadline and a size bound on each request's head,
    and optionally a pinned write buffer."""

    class BoundedHeaders(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _refusal: bytes | None = None  # the status line to answer instead of uvicorn's 400

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if stream_buffer_bytes is not None:
                transport.set_write_buffer_limits(high=stream_buffer_bytes)
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, stream_buffer_bytes)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if self._refusal is None:
                super().send_400_response(msg)
                return
            self.transport.write(self._refusal + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_header_bytes:
                self._refusal = b"HTTP/1.1 431 Request Header Fields Too Large"
                raise _HeadTooLarge()  # stops the parser; uvicorn then answers via send_400_response

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _head_timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return  # a response is under way on this connection: not a head that is late
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    return BoundedHeaders


class _HeadTooLarge(Exception):
    pass


def run(app, host: str, port: int, server: ServerConfig, drain: Callable[[], Awaitable[object]],
        log_level: str = "info") -> int:
    """Serve `app` until a signal and its drain; the exit status (0, or 1 when forced)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, log_config=None,
        timeout_keep_alive=server.keep_alive_timeout_s, timeout_graceful_shutdown=_CONNECTIONS_GRACE_S,
        http=bounded_headers_protocol(server.header_timeout_s, server.max_header_bytes, server.stream_buffer_bytes),
    )
    uv = DrainingServer(config, drain)
    uv.run()
    return 1 if uv.forced else 0
