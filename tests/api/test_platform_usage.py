"""Metering on the live routes: every response's usage equals its usage row (tokens, and the cost
from the configured prices), streams and aborted requests included; `chatforge usage` sums the
rows; neither the database nor the log holds a full key, a prompt or a completion."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass

import httpx
import pytest
from typer.testing import CliRunner

from chatforge.cli import app as cli_app
from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade

from .conftest import PRICE_IN, PRICE_OUT
from .platform_fixtures import DIALECTS, MODEL, chat_call, live_app, run_sql, usage_row, usage_rows

SCOPES = {"legacy": 7, "successor": 7, "egp": "d-meter"}
MARKER = "zebra marmalade"  # in every prompt here, so a dump can be searched for prompt text


@dataclass
class Metered:
    http: httpx.Client
    url: str
    path: str  # the SQLite file
    key: str
    prefix: str
    engine: object


@pytest.fixture(scope="module")
async def metered(tmp_path_factory, api_settings, catalog):
    path = tmp_path_factory.mktemp("usage") / "usage.db"
    url = f"sqlite:///{path}"

    async def work(conn):
        await accounts.create_account(conn, "meter")
        await accounts.create_product(conn, 7, "meter", ["smollm2"])
        await accounts.create_deployment(conn, "d-meter", "meter", "smollm2")
        return await keys.create_key(conn, ["meter"])

    await upgrade(url)
    secret, key = await run_sql(url, work)
    engine = create_engine(url)
    with live_app(api_settings.model_copy(update={"database_url": url}), catalog) as (live, _), \
            httpx.Client(base_url=live.url, timeout=120) as http:
        yield Metered(http, url, str(path), secret, key.prefix, engine)
    await engine.dispose()


def usage_of(route: str, body: dict, stream: bool) -> tuple[int, int, float | None]:
    """(prompt tokens, completion tokens, estimated cost or None) as a response, or a stream's
    last event, reports them."""
    if route == "legacy":
        u = (body if stream else body["data"])["usage"]
        assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
        return u["input_tokens"], u["output_tokens"], None
    if route == "egp":
        return body["prompt_tokens"], body["response_tokens"], None
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    return u["prompt_tokens"], u["completion_tokens"], u["estimated_cost"]


def last_event(text: str) -> dict:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    return json.loads(next(e for e in reversed(events) if e != "[DONE]"))


def cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE_IN + completion * PRICE_OUT) / 1_000_000


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("route", list(DIALECTS))
async def test_each_response_equals_its_usage_row(metered, route, stream):
    c = chat_call(route, metered.key, scope=SCOPES.get(route), max_tokens=6, stream=stream,
                  prompt=f"Say something about a {MARKER}.")
    body = dict(c.body)
    if stream and route in ("openai", "deepinfra", "successor", "completions"):
        body["stream_options"] = {"include_usage": True}
    r = metered.http.post(c.path, json=body, headers=c.headers)
    assert r.status_code == 200, r.text
    prompt, completion, reported_cost = usage_of(route, last_event(r.text) if stream else r.json(), stream)
    row = await usage_row(metered.engine, r.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["estimated_cost"] == cost(prompt, completion)  # the configured prices, exactly
    if reported_cost is not None:
        assert row["estimated_cost"] == reported_cost
    assert (row["model"], row["dialect"], row["status"], row["key_prefix"], row["account"]) == (
        MODEL, DIALECTS[route], "completed", metered.prefix, "meter")
    assert 0 < row["latency_s"] < 120


async def wait_for(engine, predicate, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [row for row in await usage_rows(engine) if predicate(row)]
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError("no such usage row")


async def test_an_abandoned_stream_is_metered_as_aborted(metered):
    c = chat_call("openai", metered.key, max_tokens=400, stream=True, prompt=f"Tell a long story about a {MARKER}.")
    with metered.http.stream("POST", c.path, json={**c.body, "ignore_eos": True}, headers=c.headers) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"' in line:
                break  # one token seen: hang up
    row = await usage_row(metered.engine, request_id)
    assert row["status"] == "aborted" and 0 < row["completion_tokens"] < 400


async def test_an_abandoned_request_is_metered_as_aborted(metered):
    before = len(await usage_rows(metered.engine))
    c = chat_call("egp", metered.key, scope="d-meter", max_tokens=3000, prompt=f"Tell a long story about a {MARKER}.")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(metered.http.base_url.join(c.path), json=c.body, headers=c.headers, timeout=1.5)
    row = await wait_for(metered.engine, lambda row: row["id"] > before and row["status"] == "aborted")
    assert (row["dialect"], row["deployment_id"], row["key_prefix"]) == ("egp", "d-meter", metered.prefix)
    assert row["completion_tokens"] < 3000


def test_the_usage_command_sums_the_rows(metered):
    """Every row of the module's requests, summed by key, by account and by model. (Not a
    coroutine: the command runs its own event loop.)"""
    call = chat_call("openai", metered.key, max_tokens=3)
    request_id = metered.http.post(call.path, json=call.body, headers=call.headers).headers["x-request-id"]
    deadline = time.monotonic() + 10
    with closing(sqlite3.connect(metered.path)) as conn:
        while not conn.execute("SELECT 1 FROM usage WHERE request_id = ?", (request_id,)).fetchone():
            assert time.monotonic() < deadline, "no usage row"
            time.sleep(0.05)
        n, p, c, usd = conn.execute("SELECT count(*), sum(prompt_tokens), sum(completion_tokens), sum(estimated_cost)"
                                    " FROM usage").fetchone()
    runner = CliRunner()
    for by, group in [("key", metered.prefix), ("account", "meter"), ("model", MODEL)]:
        result = runner.invoke(cli_app, ["usage", "--by", by, "--json", "--database-url", metered.url])
        assert result.exit_code == 0, result.stderr
        (total,) = json.loads(result.stdout.strip().splitlines()[-1])
        assert total == {by: group, "requests": n, "prompt_tokens": p, "completion_tokens": c,
                         "estimated_cost": pytest.approx(usd, rel=1e-12), "rate_limited": 0}
        assert total["estimated_cost"] == pytest.approx(cost(p, c), rel=1e-9)


def test_the_database_holds_no_key_and_no_text(metered):
    r = metered.http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {metered.key}"},
                          json={"model": "smollm2", "messages": [{"role": "user", "content": f"Name a {MARKER}."}],
                                "max_tokens": 12, "temperature": 0})
    completion = r.json()["choices"][0]["message"]["content"]
    assert len(completion) > 8
    with closing(sqlite3.connect(metered.path)) as conn:
        dump = "\n".join(conn.iterdump())
    assert metered.prefix in dump  # the visible part is kept, to name the key
    assert metered.key not in dump and metered.key.split("_")[1] not in dump
    assert MARKER not in dump and completion not in dump


def test_the_log_names_requests_and_keys_by_prefix_only(metered, caplog):
    caplog.set_level(logging.INFO, logger="chatforge")
    c = chat_call("legacy", metered.key, scope=7, max_tokens=4, prompt=f"Describe a {MARKER}.")
    r = metered.http.post(c.path, json=c.body, headers=c.headers)
    deadline = time.monotonic() + 5
    while r.headers["x-request-id"] not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = [rec.getMessage() for rec in caplog.records if r.headers["x-request-id"] in rec.getMessage()]
    assert f"key={metered.prefix} account=meter status=200" in line
    assert "dialect=infomaniak" in line and "prompt_tokens=" in line
    text = caplog.text
    assert metered.key not in text and metered.key.split("_")[1] not in text
    assert MARKER not in text and r.json()["data"]["choices"][0]["message"]["content"] not in text
