"""How a real `chatforge serve --gateway` ends requests that run on its upstreams (two fake
chatforge nodes that sleep per token, so the ends are exact): the request timeout cuts a remote
request with finish reason `length` and frees it on its node; SIGTERM drains, cutting what still
runs at the drain timeout with each stream's proper end, one usage row per request, nothing
left running on the nodes, exit 0. A node's own drain is tests/upstream/test_fleet.py's."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time

import httpx
import pytest

from api.platform_fixtures import free_port

from .fake_node import FakeNode
from .processes import ServeProcess
from .servers import ThreadServer

REQUEST_TIMEOUT_S = 4.0
DRAIN_TIMEOUT_S = 1.5
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the name the gateway asks its nodes for
LONG = 1000  # tokens: 10 s at the fake's pace, far past either bound


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-ends")
    nodes = [FakeNode(MODEL_ID, token_delay=0.01) for _ in range(2)]
    servers = [ThreadServer(n.app()).__enter__() for n in nodes]
    (folder / "gateway.toml").write_text('[[models]]\npath = "smollm2"\nupstreams = [' + ", ".join(
        f'{{url = "{s.url}"}}' for s in servers) + "]\n")
    env = {"CHATFORGE_LIMITS__REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
           "CHATFORGE_SERVER__DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S), "CHATFORGE_LOG_LEVEL": "info"}
    process = ServeProcess("gateway", free_port(), ["--gateway", "--config", str(folder / "gateway.toml"),
                                                    "--database-url", f"sqlite:///{folder / 'gateway.db'}"], folder, env)
    try:
        process.start().wait_healthy()
        yield process, nodes
    finally:
        process.stop()
        for s in servers:
            s.__exit__()


def body(stream: bool) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": LONG,
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}


async def streamed(client: httpx.AsyncClient, url: str) -> tuple[str, list]:
    async with client.stream("POST", url + "/v1/chat/completions", json=body(True)) as r:
        assert r.status_code == 200
        lines = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    return r.headers["x-request-id"], [line if line == "[DONE]" else json.loads(line) for line in lines]


def finish_reasons(events: list) -> list[str]:
    return [c["finish_reason"] for e in events[:-1] for c in e.get("choices", []) if c.get("finish_reason")]


def usage_rows(process: ServeProcess) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(process.folder / "gateway.db") as db:
        return {r: (s, n) for r, s, n in db.execute("SELECT request_id, status, completion_tokens FROM usage")}


async def until(ready, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, "never got there"
        await asyncio.sleep(0.02)


async def test_the_request_timeout_cuts_a_remote_request_and_frees_it_on_its_node(gateway):
    process, nodes = gateway
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.monotonic()
        request_id, events = await streamed(client, process.url)
        took = time.monotonic() - started
        plain = await client.post(process.url + "/v1/chat/completions", json=body(False))
    assert REQUEST_TIMEOUT_S <= took < REQUEST_TIMEOUT_S + 2, took
    assert events[-1] == "[DONE]" and finish_reasons(events) == ["length"] and "error" not in events[-2]
    cut_at = events[-2]["usage"]["completion_tokens"]
    assert 0 < cut_at < LONG
    assert plain.status_code == 200 and plain.json()["choices"][0]["finish_reason"] == "length"
    assert plain.json()["usage"]["completion_tokens"] < LONG
    await until(lambda: all(n.running == 0 for n in nodes), 5)  # the upstream requests were closed, not left to run
    await until(lambda: len(usage_rows(process)) == 2, 10)  # written behind the answers
    rows = usage_rows(process)
    assert rows[request_id] == ("timed_out", cut_at)
    assert rows[plain.headers["x-request-id"]][0] == "timed_out"


async def test_sigterm_drains_a_gateway_its_remote_requests_cut_and_settled(gateway):
    process, nodes = gateway
    before = usage_rows(process)
    async with httpx.AsyncClient(timeout=60) as client:
        streams = [asyncio.create_task(streamed(client, process.url)) for _ in range(3)]
        plain = asyncio.create_task(client.post(process.url + "/v1/chat/completions", json=body(False)))
        await until(lambda: sum(n.running for n in nodes) == 4)
        process.process.send_signal(signal.SIGTERM)
        await until(lambda: httpx.get(process.url + "/health").status_code == 503)
        late = await client.post(process.url + "/v1/chat/completions", json=body(False))
        results = await asyncio.gather(*streams)
        whole = await plain
    assert process.process.wait(timeout=30) == 0, process.log_text()[-3000:]
    assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
    for _, events in results:  # cut at the drain timeout: the stream's proper end, no error
        assert events[-1] == "[DONE]" and finish_reasons(events) == ["length"]
        assert 0 < events[-2]["usage"]["completion_tokens"] < LONG
    assert whole.status_code == 200 and whole.json()["choices"][0]["finish_reason"] == "length"
    await until(lambda: all(n.running == 0 for n in nodes), 5)
    rows = {r: v for r, v in usage_rows(process).items() if r not in before}
    ids = sorted([r for r, _ in results] + [whole.headers["x-request-id"]])
    assert sorted(rows) == ids and all(status == "aborted" for status, _ in rows.values()), rows
    log = process.log_text()
    assert "draining: 4 requests in flight" in log and "cutting 4 requests short" in log and "drained" in log
