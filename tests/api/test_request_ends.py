"""Every way a request is ended early, on a live server around the session's model: cut by the
drain at its timeout (a proper last event, finish reason length), by the request timeout, taken
off the queue by the queue timeout (503), aborted because its reader stalled. Each frees its KV
blocks and writes its usage row saying so."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.api.server import bounded_headers_protocol
from chatforge.platform.db import create_engine

from .conftest import LiveServer, metric
from .platform_fixtures import usage_row

MSG = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
LONG = {"model": "smollm2", "messages": MSG, "max_tokens": 1500, "ignore_eos": True}


def _settings(api_settings, tmp_path, **sections):
    """The session's settings with their own database and these sections' fields replaced."""
    changes = {"database_url": f"sqlite:///{tmp_path / 'ends.db'}"}
    for section, fields in sections.items():
        changes[section] = getattr(api_settings, section).model_copy(update=fields)
    return api_settings.model_copy(update=changes)


def _row(settings, request_id: str) -> dict:
    async def read():
        engine = create_engine(settings.database_url)
        try:
            return await usage_row(engine, request_id)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _wait_idle(http: httpx.Client, timeout_s: float = 60) -> str:
    """/metrics once the engine holds no KV block (raises after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = http.get("/metrics").text
        if metric(text, "chatforge_kv_cache_blocks_used") == 0 and metric(text, "chatforge_running_requests") == 0:
            return text
        if time.monotonic() > deadline:
            raise AssertionError("KV blocks still held:\n" + text)
        time.sleep(0.1)


def _count(text: str, sample: str) -> float:
    """A counter's value, 0 before its first increment (a labelled series appears only then)."""
    try:
        return metric(text, sample)
    except KeyError:
        return 0.0


def _events(lines) -> list[dict | str]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def test_the_drain_cuts_what_outlives_its_timeout(api_settings, catalog, tmp_path):
    settings = _settings(api_settings, tmp_path)
    app = create_app(settings, catalog)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        body = {**LONG, "stream": True, "stream_options": {"include_usage": True}}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            drain = asyncio.run_coroutine_threadsafe(app.state.drain.run(0.5), live.server.servers[0].get_loop())
            late = http.post("/v1/chat/completions", json={**LONG, "max_tokens": 1})
            health = http.get("/health")
            events = _events([first, *lines])
        assert drain.result(60) == 1  # one request was cut
        assert (late.status_code, late.headers["retry-after"], late.json()["error"]["code"]) == (503, "5", "server_shutting_down")
        assert (health.status_code, health.json()["status"]) == (503, "draining")
        assert events[-1] == "[DONE]"
        finishes = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
        assert finishes == ["length"]
        usage = events[-2]["usage"]
        assert 0 < usage["completion_tokens"] < LONG["max_tokens"]
        _wait_idle(http)
        row = _row(settings, response.headers["x-request-id"])
        assert (row["status"], row["completion_tokens"]) == ("aborted", usage["completion_tokens"])


def test_the_request_timeout_ends_a_request_with_finish_reason_length(api_settings, catalog, tmp_path):
    settings = _settings(api_settings, tmp_path, limits={"request_timeout_s": 1.0})
    with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        response = http.post("/v1/chat/completions", json=LONG)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] < LONG["max_tokens"]
        _wait_idle(http)
        row = _row(settings, response.headers["x-request-id"])
        assert (row["status"], row["completion_tokens"]) == ("timed_out", body["usage"]["completion_tokens"])


def test_the_queue_timeout_withdraws_a_request_with_503(api_settings, catalog, tmp_path):
    # No engine answers within a millisecond: every request is withdrawn from the queue.
    settings = _settings(api_settings, tmp_path, limits={"queue_timeout_s": 0.001})
    with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        for stream in (False, True):
            response = http.post("/1/llm/1", json={"messages": MSG, "max_new_tokens": 50, "stream": stream})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "service_unavailable"  # Infomaniak's envelope
            _wait_idle(http)
            row = _row(settings, response.headers["x-request-id"])
            assert (row["status"], row["completion_tokens"]) == ("timed_out", 0)


def test_a_stalled_reader_is_aborted_and_its_blocks_freed(api_settings, catalog, tmp_path):
    stall_s, buffer = 1.0, 4096
    settings = _settings(api_settings, tmp_path, server={"stream_stall_timeout_s": stall_s})
    protocol = bounded_headers_protocol(10.0, 65536, buffer)
    with LiveServer(create_app(settings, catalog), http=protocol) as live, \
            httpx.Client(base_url=live.url, timeout=120) as http:
        body = json.dumps({**LONG, "stream": True, "logprobs": True, "top_logprobs": 20}).encode()
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)  # before connect: the window stays small
        reader.connect(("127.0.0.1", live.port))
        reader.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                       + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        try:  # ... and reads nothing
            deadline = time.monotonic() + 120
            while _count(http.get("/metrics").text, 'chatforge_stalled_streams_total{dialect="openai"}') < 1:
                assert time.monotonic() < deadline, "the stalled stream was never aborted"
                time.sleep(0.2)
            text = _wait_idle(http, timeout_s=10)
            assert metric(text, 'chatforge_stalled_streams_total{dialect="openai"}') == 1
        finally:
            reader.close()
        rows = asyncio.run(_all_rows(settings))
        assert [(r["status"], r["completion_tokens"] < LONG["max_tokens"]) for r in rows] == [("aborted", True)]


async def _all_rows(settings) -> list[dict]:
    from .platform_fixtures import usage_rows

    engine = create_engine(settings.database_url)
    try:
        for _ in range(100):
            rows = await usage_rows(engine)
            if rows:
                return rows
            await asyncio.sleep(0.05)
        return []
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _engine_left_idle(http):
    """The session's engine is shared: each test must leave it holding nothing."""
    yield
    _wait_idle(http)
