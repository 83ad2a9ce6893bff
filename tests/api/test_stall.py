"""The stall bound of a streaming response (api/sse.py, api/stall.py) on its own, with ASGI
`send`s that take their time: a send that waits the whole timeout ends the stream (the body is
closed, `on_stall` called once); time spent waiting for the next chunk never counts; a
cancellation from elsewhere (the client went away) still cancels. The live stalled reader, with
its KV blocks freed, is tests/api/test_request_ends.py."""

from __future__ import annotations

import asyncio

import pytest

from chatforge.api.sse import sse_response

STALL_S = 0.2


async def _body(n: int, gap_s: float, closed: list[str]):
    try:
        for i in range(n):
            await asyncio.sleep(gap_s)
            yield b"data: %d\n\n" % i
    finally:
        closed.append("closed")


def _stream(n: int, gap_s: float, send_s: float | None):
    """Runs one response; send_s None: the reader takes nothing once the headers are sent."""
    async def run():
        sent, closed, stalls = [], [], []

        async def send(message):
            if message["type"] == "http.response.body":
                await (asyncio.Event().wait() if send_s is None else asyncio.sleep(send_s))
            sent.append(message)

        response = sse_response(_body(n, gap_s, closed), stall_timeout_s=STALL_S, on_stall=lambda: stalls.append(1))
        await response.stream_response(send)
        return sent, closed, stalls

    return asyncio.run(run())


def test_a_send_that_waits_the_whole_timeout_ends_the_stream():
    sent, closed, stalls = _stream(3, 0.0, None)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert (closed, stalls) == (["closed"], [1])


def test_waiting_for_the_next_chunk_is_not_a_stall():
    # each chunk comes after more than the timeout; each send takes under half of it
    sent, closed, stalls = _stream(3, STALL_S * 1.5, STALL_S * 0.4)
    assert [m.get("body") for m in sent] == [None, b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert (closed, stalls) == (["closed"], [])


def test_a_cancellation_from_elsewhere_still_cancels():
    async def run():
        closed = []

        async def send(message):
            if message["type"] == "http.response.body":
                await asyncio.Event().wait()

        response = sse_response(_body(2, 0.0, closed), stall_timeout_s=STALL_S, on_stall=lambda: closed.append("stall"))
        task = asyncio.ensure_future(response.stream_response(send))
        await asyncio.sleep(STALL_S / 4)
        task.cancel()  # as Starlette does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(STALL_S * 1.5)  # the watch's timer is gone with the stream
        return closed

    assert asyncio.run(run()) == ["closed"]
