"""Rate limits on the live routes: requests and tokens per minute per key and per product, with
the in-process limiter and with Redis. Refusals are 429 in each dialect's envelope with
Retry-After and x-ratelimit-* headers; successes, JSON and SSE alike, carry the headers too."""

from __future__ import annotations

import asyncio
import re
from contextlib import contextmanager

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.errors import RateLimiterUnavailableError
from chatforge.platform.migrations import upgrade

from .platform_fixtures import (  # noqa: F401 - fresh_redis_url and redis_url are fixtures
    DIALECTS, chat_call, free_port, fresh_redis_url, live_app, redis_url, run_sql, usage_rows,
)

ROUTES = list(DIALECTS)
SCOPES = {"legacy": 1, "successor": 1, "egp": "d-acme"}


async def make_key(url: str, **options) -> str:
    """A key of account `acme` (created with product 1 and deployment d-acme when missing)."""
    async def work(conn):
        if not await accounts.list_accounts(conn):
            await accounts.create_account(conn, "acme")
            await accounts.create_product(conn, 1, "acme", ["smollm2"])
            await accounts.create_deployment(conn, "d-acme", "acme", "smollm2")
        return (await keys.create_key(conn, ["acme"], **options))[0]

    await upgrade(url)
    return await run_sql(url, work)


@pytest.fixture(params=["local", "redis"])
def limiter_redis(request) -> str | None:
    """None: the in-process limiter; else a Redis URL (a database of its own)."""
    return None if request.param == "local" else request.getfixturevalue("fresh_redis_url")


@pytest.fixture
def server_at(api_settings, catalog):
    """A factory: a live server on a new SQLite file (and Redis, when given)."""
    @contextmanager
    def start(url: str, redis: str | None = None):
        settings = api_settings.model_copy(update={"database_url": url, "redis_url": redis})
        with live_app(settings, catalog) as (live, _):
            yield live
    return start


def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'limits.db'}"


async def fire(live, calls) -> list[httpx.Response]:
    """All the calls at once."""
    async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
        return await asyncio.gather(*(client.post(c.path, json=c.body, headers=c.headers) for c in calls))


def rate_limited_total(metrics: str) -> float:
    return sum(float(v) for v in re.findall(r'^chatforge_rate_limited_requests_total\{[^}]*\} (\S+)$', metrics, re.M))


def refusal_code(route: str, body: dict) -> str:
    if route == "legacy":
        assert body["result"] == "error"
        return body["error"]["code"]
    if route == "egp":
        assert set(body) == {"detail", "code", "param"}
        return body["code"]
    assert body["error"]["type"] == "rate_limit_error"
    return body["error"]["code"]


async def test_concurrent_requests_on_every_route_against_rpm_5(tmp_path, server_at, limiter_redis):
    url = db(tmp_path)
    key = await make_key(url, rpm=5)
    with server_at(url, limiter_redis) as live:
        responses = await fire(live, [chat_call(route, key, scope=SCOPES.get(route)) for route in ROUTES * 4])
        metrics = httpx.get(live.url + "/metrics").text
    statuses = [r.status_code for r in responses]
    refused = 4 * len(ROUTES) - 5  # four on each route at once: 5 admitted, the rest refused
    assert (statuses.count(200), statuses.count(429)) == (5, refused)
    for route, r in zip(ROUTES * 4, responses):
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        if r.status_code == 429:
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert refusal_code(route, r.json()) == "rate_limit_exceeded"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200)
    assert remaining == [0, 1, 2, 3, 4]
    assert rate_limited_total(metrics) == refused
    engine = create_engine(url)
    try:
        for _ in range(100):  # the server writes rows a few milliseconds after answering
            rows = await usage_rows(engine)
            if len(rows) == len(responses):
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()

    def row_ids(status: str) -> list[str]:
        return sorted(row["request_id"] for row in rows if row["status"] == status)

    def answer_ids(code: int) -> list[str]:
        return sorted(r.headers["x-request-id"] for r in responses if r.status_code == code)

    assert row_ids("completed") == answer_ids(200)
    # each refusal is a usage row of its own, without tokens or cost, under the id it was told
    assert row_ids("rate_limited") == answer_ids(429)
    assert {(row["prompt_tokens"], row["completion_tokens"], row["estimated_cost"])
            for row in rows if row["status"] == "rate_limited"} == {(0, 0, 0.0)}


def prompt_tokens(live, key: str) -> int:
    r = httpx.post(live.url + "/v1/chat/completions", json=chat_call("openai", key).body,
                   headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


async def test_tpm_reserves_prompt_plus_max_tokens(tmp_path, server_at, limiter_redis):
    url = db(tmp_path)
    probe = await make_key(url)
    with server_at(url, limiter_redis) as live:
        p = prompt_tokens(live, probe)
        per_request = p + 1  # the prompt and max_tokens 1; settling with the real count changes nothing
        key = await make_key(url, tpm=3 * per_request)
        responses = await fire(live, [chat_call("openai", key) for _ in range(12)])
    statuses = [r.status_code for r in responses]
    assert (statuses.count(200), statuses.count(429)) == (3, 9)
    for r in responses:
        assert r.headers["x-ratelimit-limit-tokens"] == str(3 * per_request)
        if r.status_code == 429:
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert "tokens per minute (TPM)" in r.json()["error"]["message"]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in responses if r.status_code == 200)
    assert remaining == [0, per_request, 2 * per_request]


async def test_reservations_are_settled_with_the_real_count(tmp_path, server_at, limiter_redis):
    url = db(tmp_path)
    key = await make_key(url, tpm=10_000)
    with server_at(url, limiter_redis) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        first = chat_call("openai", key, max_tokens=200, prompt="What is the capital of France? Answer in one sentence.")
        r1 = http.post(first.path, json={**first.body, "temperature": 0}, headers=first.headers)
        used = r1.json()["usage"]
        assert used["completion_tokens"] < 200  # it stopped early: the reservation was larger
        second = chat_call("openai", key)
        r2 = http.post(second.path, json=second.body, headers=second.headers)
        p2 = r2.json()["usage"]["prompt_tokens"]
    assert r1.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used["prompt_tokens"] - 200)
    assert r2.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used["total_tokens"] - (p2 + 1))


async def test_a_products_own_limit(tmp_path, server_at):
    url = db(tmp_path)
    key = await make_key(url, rpm=100)

    async def limited_product(conn):
        await accounts.create_product(conn, 3, "acme", ["smollm2"], rpm=2)

    await run_sql(url, limited_product)
    with server_at(url) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        c = chat_call("legacy", key, scope=3)
        answers = [http.post(c.path, json=c.body, headers=c.headers) for _ in range(3)]
        other = chat_call("legacy", key, scope=1)
        elsewhere = http.post(other.path, json=other.body, headers=other.headers)
    assert [r.status_code for r in answers] == [200, 200, 429]
    # the tightest scope speaks: the product's 2, not the key's 100
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["1", "0", "0"]
    assert {r.headers["x-ratelimit-limit-requests"] for r in answers} == {"2"}
    assert answers[2].json()["error"]["description"] == (
        "Rate limit reached for requests per minute (RPM) on this product: limit 2. "
        f"Please retry after {answers[2].headers['Retry-After']} s.")
    assert answers[2].headers["Deprecation"] == "true"
    assert elsewhere.status_code == 200 and elsewhere.headers["x-ratelimit-remaining-requests"] == "97"


@pytest.mark.parametrize("route", ROUTES)
def test_streams_carry_the_headers_too(route, tmp_path, server_at):
    url = db(tmp_path)
    key = asyncio.run(make_key(url, rpm=7, tpm=5000))
    with server_at(url) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        c = chat_call(route, key, scope=SCOPES.get(route), stream=True)
        with http.stream("POST", c.path, json=c.body, headers=c.headers) as r:
            body = r.read().decode()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]) == ("7", "6")
    assert r.headers["x-ratelimit-limit-tokens"] == "5000"
    assert r.headers["x-request-id"] and body.startswith("data: ")


async def test_an_unreachable_redis_stops_the_start(tmp_path, api_settings, catalog):
    settings = api_settings.model_copy(update={"database_url": db(tmp_path),
                                               "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_app(settings, catalog)
    with pytest.raises(RateLimiterUnavailableError, match="Cannot reach Redis"):
        async with app.router.lifespan_context(app):
            pass
