"""A server that closes a kept-alive connection after a streamed answer, as llama.cpp's server
does although its headers say keep-alive: the bench client sends a request that finds its
connection gone once more, on a new one, and every request is measured."""

from __future__ import annotations

import asyncio
import json

import httpx

from chatforge.bench.client import Endpoint, RequestOptions, open_response, send
from chatforge.bench.workload import RequestSpec

TOKENS = 3


def _stream_response() -> bytes:
    frames = [{"choices": [{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}]} for i in range(TOKENS)]
    frames.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n" \
           b"Keep-Alive: timeout=5, max=100\r\n\r\n"
    return head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


class ClosingServer:
    """Answers the first request of each connection with a stream; a second request on the same
    connection finds it closed, deterministically (llama-server closes right after the stream,
    so a client that reuses the connection at once races the close). Connections still open
    when the test ends are cancelled with the server."""

    def __init__(self):
        self.connections = 0
        self.dropped = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await _read_request(reader)
        writer.write(_stream_response())
        await writer.drain()
        if await _read_request(reader):
            self.dropped += 1
        writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Reads one request (head and Content-Length body); False at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return True


def test_a_request_on_a_connection_the_server_closed_is_sent_again():
    async def run():
        closing = ClosingServer()
        server = await asyncio.start_server(closing.handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        bodies = []
        async with server, httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):
                # read to the end, so the connection goes back to the pool (as compare.py's client does)
                r = await open_response(client, client.build_request("POST", url, json={"stream": True}))
                try:
                    bodies.append((r.status_code, await r.aread()))
                finally:
                    await r.aclose()
        return closing, bodies

    closing, bodies = asyncio.run(run())
    assert [status for status, _ in bodies] == [200] * 3
    assert all(body.endswith(b"data: [DONE]\n\n") for _, body in bodies)
    assert (closing.connections, closing.dropped) == (3, 2)  # each reuse found its connection closed


def test_the_bench_client_measures_streams_from_such_a_server():
    async def run():
        closing = ClosingServer()
        server = await asyncio.start_server(closing.handle, "127.0.0.1", 0)
        endpoint = Endpoint(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "m", "closing")
        spec = RequestSpec(({"role": "user", "content": "hi"},), TOKENS)
        async with server, httpx.AsyncClient(timeout=10) as client:
            return [await send(client, endpoint, spec, RequestOptions()) for _ in range(3)]

    results = asyncio.run(run())
    assert [(r.ok, r.error, r.output_tokens) for r in results] == [(True, None, TOKENS)] * 3
