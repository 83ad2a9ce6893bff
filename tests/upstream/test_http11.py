"""The node client's own HTTP/1.1 (http11.py) against a real uvicorn: answers read as they come,
connections kept alive and reused, a connection the server closed while idle replaced without
failing the request, an answer given up part way closing its connection (the server sees the
client go), silence ending a request, and an unreachable origin said as such."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chatforge.upstream.http11 import Http11Pool, NodeConnectionError

from .servers import ThreadServer, unused_url

clients: list[tuple[str, int]] = []  # the (host, port) each request came from
gone: list[str] = []  # requests whose client went away mid-stream


async def lines(request: Request):
    clients.append(tuple(request.scope["client"]))
    count, delay = int(request.query_params.get("n", 3)), float(request.query_params.get("delay", 0))
    body = await request.body()

    async def stream():
        try:
            for i in range(count):
                if delay:
                    await asyncio.sleep(delay)
                yield f"line {i} of {body.decode()}\n".encode()
        except BaseException:
            gone.append(body.decode())
            raise

    return StreamingResponse(stream(), media_type="application/x-ndjson")


async def refuse(request: Request):
    return Response(b'{"error": "nope"}', status_code=503)


@pytest.fixture(scope="module")
def server():
    app = Starlette(routes=[Route("/lines", lines, methods=["POST"]), Route("/refuse", refuse, methods=["POST"])])
    with ThreadServer(app) as live:
        yield live


async def read_lines(response) -> list[bytes]:
    try:
        return [line async for line in response.lines()]
    finally:
        response.release()


async def test_answers_are_read_whole_on_one_kept_alive_connection(server):
    pool = Http11Pool(server.url, connect_timeout_s=2)
    clients.clear()
    for i in range(5):
        response = await pool.post("/lines?n=3", f"r{i}".encode(), {"content-type": "text/plain"}, silence_s=5)
        assert response.status == 200
        assert await read_lines(response) == [f"line {j} of r{i}".encode() for j in range(3)]
    assert len(clients) == 5 and len(set(clients)) == 1  # one connection, reused
    refused = await pool.post("/refuse", b"", {}, silence_s=5)
    assert refused.status == 503 and await refused.read() == b'{"error": "nope"}'
    refused.release()
    await pool.close()


async def test_a_connection_closed_while_idle_is_replaced(server):
    pool = Http11Pool(server.url, connect_timeout_s=2)
    clients.clear()
    await read_lines(await pool.post("/lines?n=1", b"a", {}, silence_s=5))
    pool.idle[0].transport.close()  # as a server does when its keep-alive timeout passes
    await asyncio.sleep(0.05)
    assert await read_lines(await pool.post("/lines?n=1", b"b", {}, silence_s=5)) == [b"line 0 of b"]
    assert len(set(clients)) == 2
    await pool.close()


async def test_an_answer_given_up_part_way_closes_its_connection(server):
    pool = Http11Pool(server.url, connect_timeout_s=2)
    gone.clear()
    response = await pool.post("/lines?n=50&delay=0.05", b"cut", {}, silence_s=5)
    async for line in response.lines():
        break
    response.release()
    assert pool.idle == []
    for _ in range(100):
        if gone:
            break
        await asyncio.sleep(0.02)
    assert gone == ["cut"]  # the server saw its client go
    await pool.close()


async def test_silence_ends_a_request(server):
    pool = Http11Pool(server.url, connect_timeout_s=2)
    response = await pool.post("/lines?n=2&delay=1.0", b"slow", {}, silence_s=0.3)
    with pytest.raises(TimeoutError):
        await read_lines(response)
    await pool.close()


async def test_an_unreachable_origin():
    pool = Http11Pool(unused_url(), connect_timeout_s=2)
    with pytest.raises(NodeConnectionError, match="cannot connect"):
        await pool.post("/lines", b"", {}, silence_s=1)
