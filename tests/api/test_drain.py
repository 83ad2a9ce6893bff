"""SIGTERM on a real `chatforge serve` process (api/server.py, api/drain.py): the streams it is
running finish whole, the requests queued behind them run too, a late request is refused with
503 in its dialect's envelope while `/health` says draining, every admitted request writes its
usage row, and the process exits 0. A second signal ends it at once. (The drain timeout's cut
is tested in-process: test_request_ends.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time

import httpx

from .conftest import metric
from .processes import start_serve

MSG = [{"role": "user", "content": "Write a poem about the sea."}]
TOKENS = 16


async def _stream(client: httpx.AsyncClient, url: str) -> tuple[int, list]:
    body = {"model": "smollm2", "messages": MSG, "max_tokens": TOKENS, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    return response.status_code, [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


async def _complete(client: httpx.AsyncClient, url: str) -> httpx.Response:
    body = {"model": "smollm2", "messages": MSG, "max_tokens": TOKENS, "ignore_eos": True}
    return await client.post(url + "/v1/chat/completions", json=body)


async def _until(client: httpx.AsyncClient, url: str, ready, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready(await client.get(url)):
        assert time.monotonic() < deadline, f"{url} never got there"
        await asyncio.sleep(0.02)


LATE = {  # route -> (body, the code its envelope gives)
    "/v1/chat/completions": ({"model": "smollm2", "messages": MSG, "max_tokens": 1},
                             lambda b: b["error"]["code"] == "server_shutting_down"),
    "/1/llm/1": ({"messages": MSG, "max_new_tokens": 1}, lambda b: b["error"]["code"] == "service_unavailable"),
    "/v4/models/d-any/chat-completions": ({"chat_history": [], "prompt": "hi", "max_tokens": 1},
                                          lambda b: b["code"] == "server_shutting_down"),
}


async def test_sigterm_drains_the_streams_and_the_queue_then_exits_0(tmp_path):
    database = tmp_path / "chatforge.db"
    served = start_serve(tmp_path, f"sqlite:///{database}", {"CHATFORGE_ENGINE__MAX_NUM_SEQS": "4"})
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            # Four streams take the engine's four places; two more requests wait in its queue.
            streams = [asyncio.create_task(_stream(client, served.url)) for _ in range(4)]
            await _until(client, served.url + "/metrics",
                         lambda r: metric(r.text, "chatforge_running_requests") == 4)
            queued = [asyncio.create_task(_stream(client, served.url)), asyncio.create_task(_complete(client, served.url))]
            await _until(client, served.url + "/metrics",
                         lambda r: metric(r.text, "chatforge_waiting_requests") == 2)
            served.signal(signal.SIGTERM)
            await _until(client, served.url + "/health", lambda r: r.status_code == 503)
            health = (await client.get(served.url + "/health")).json()
            late = {path: await client.post(served.url + path, json=body) for path, (body, _) in LATE.items()}
            results = await asyncio.gather(*streams, queued[0])
            whole = await queued[1]
        assert served.wait(timeout=120) == 0, served.log_text()[-3000:]
    finally:
        served.stop()
    assert health["status"] == "draining" and health["in_flight"] == 6
    for path, response in late.items():
        assert (response.status_code, response.headers["retry-after"]) == (503, "5"), path
        assert LATE[path][1](response.json()), response.text
    for status, events in results:  # whole: every token, the finish, the usage, [DONE]
        assert status == 200 and events[-1] == "[DONE]"
        assert [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]] == ["length"]
        assert events[-2]["usage"]["completion_tokens"] == TOKENS
    assert whole.status_code == 200 and whole.json()["usage"]["completion_tokens"] == TOKENS
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT status, completion_tokens FROM usage").fetchall()
    assert rows == [("completed", TOKENS)] * 6
    log = served.log_text()
    assert "draining: 6 requests in flight" in log and "drained" in log and "cutting" not in log


async def test_a_second_signal_ends_the_process_at_once(tmp_path):
    """Its connections closed, each request still running ends as an abort; the log says so in
    one line, with no traceback (a task cancelled when the event loop closed logged one)."""
    served = start_serve(tmp_path, f"sqlite:///{tmp_path / 'chatforge.db'}")
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": "smollm2", "messages": MSG, "max_tokens": 1500, "ignore_eos": True}
            whole = asyncio.create_task(client.post(served.url + "/v1/chat/completions", json=body))
            async with client.stream("POST", served.url + "/v1/chat/completions", json={**body, "stream": True}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # generating; the drain would wait for it for 30 s
                await _until(client, served.url + "/metrics", lambda r: sum(
                    metric(r.text, f"chatforge_{state}_requests") for state in ("running", "waiting")) == 2)
                served.signal(signal.SIGTERM)
                await _until(client, served.url + "/health", lambda r: r.status_code == 503)
                served.signal(signal.SIGINT)
                started = time.monotonic()
                assert served.wait(timeout=30) == 1
                assert time.monotonic() - started < 10
            (cut,) = await asyncio.gather(whole, return_exceptions=True)
    finally:
        served.stop()
    assert isinstance(cut, httpx.TransportError), cut
    log = served.log_text()
    assert log.count("second signal: stopping at once, closing 2 connections") == 1, log[-3000:]
    assert log.count("status=aborted") == 2, log[-3000:]
    assert "Traceback" not in log and "CancelledError" not in log and "ERROR" not in log, log[-3000:]
