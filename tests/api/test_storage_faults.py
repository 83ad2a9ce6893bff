"""The database and Redis go away under load and come back (platform/storage.py): a live server
around the session's model, on a PostgreSQL and a Redis of this module's own, stopped and started
again mid-load. No 500 ever; no request admitted without its key checked (a wrong key is never
answered 200: 401, or 503 while the database is away); no usage row lost within the buffer's
bound; service back without a restart. Redis: limited requests fail closed (503) or fall back to
this process's own limits, as `storage.redis_unavailable` says."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade

from .conftest import LiveServer, metric
from .platform_fixtures import chat_call, run_sql, usage_rows
from .storage_servers import RestartablePostgres, RestartableRedis

STRANGER = "cf-ZZZZZZZZ_" + "Q" * 32  # well-formed, unknown


@pytest.fixture(scope="module")
def postgres():
    server = RestartablePostgres()
    yield server
    server.close()


@pytest.fixture(scope="module")
def restartable_redis():
    server = RestartableRedis()
    yield server
    server.close()


@pytest.fixture(scope="module")
def cast(postgres):
    """Account acme with product 1 and deployment d-acme; its keys: unlimited, and at 1,000 and
    at 2 requests per minute."""

    async def seed():
        await upgrade(postgres.url)

        async def work(conn):
            await accounts.create_account(conn, "acme")
            await accounts.create_product(conn, 1, "acme", ["smollm2"])
            await accounts.create_deployment(conn, "d-acme", "acme", "smollm2")
            made = {}
            for name, rpm in (("free", None), ("limited", 1000), ("tight", 2)):
                made[name] = (await keys.create_key(conn, ["acme"], name=name, rpm=rpm))[0]
            return made

        return await run_sql(postgres.url, work)

    return asyncio.run(seed())


def _server(api_settings, catalog, postgres, redis_url=None, **storage):
    settings = api_settings.model_copy(update={
        "database_url": postgres.url, "redis_url": redis_url,
        "storage": api_settings.storage.model_copy(update=storage),
    })
    return LiveServer(create_app(settings, catalog))


class Load:
    """Requests on every dialect, with a good key and a wrong one, until stopped; each answer kept."""

    def __init__(self, client: httpx.AsyncClient, url: str, key: str):
        self.client, self.url = client, url
        routes = [("openai", None), ("legacy", 1), ("egp", "d-acme"), ("successor", 1)]
        self.calls = itertools.cycle([(kind, chat_call(route, secret, scope=scope, max_tokens=2, stream=stream))
                                      for (route, scope), stream in itertools.product(routes, (False, True))
                                      for kind, secret in (("good", key), ("wrong", STRANGER))])
        self.answers: list[tuple[float, str, int, str | None, str]] = []  # time, kind, status, request id, body
        self.running = True

    async def worker(self) -> None:
        while self.running:
            kind, call = next(self.calls)
            response = await self.client.post(self.url + call.path, json=call.body, headers=call.headers)
            self.answers.append((time.monotonic(), kind, response.status_code, response.headers.get("x-request-id"),
                                 response.text))

    def count(self, kind: str, status: int, since: float = 0.0) -> int:
        return sum(1 for t, k, s, _, _ in self.answers if k == kind and s == status and t >= since)

    async def until(self, kind: str, status: int, n: int, since: float = 0.0, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count(kind, status, since) < n:
            assert time.monotonic() < deadline, f"never {n} x {status} for {kind}: {self.summary()}"
            await asyncio.sleep(0.05)

    def summary(self) -> dict:
        return {f"{k} {s}": n for (k, s), n in sorted(
            {(k, s): sum(1 for _, k2, s2, _, _ in self.answers if (k2, s2) == (k, s)) for _, k, s, _, _ in self.answers}.items())}


async def _metrics(client: httpx.AsyncClient, url: str) -> str:
    return (await client.get(url + "/metrics")).text


async def test_postgresql_stopped_mid_load_then_restarted(api_settings, catalog, postgres, cast):
    with _server(api_settings, catalog, postgres) as live:
        async with httpx.AsyncClient(timeout=120) as client:
            load = Load(client, live.url, cast["free"])
            workers = [asyncio.create_task(load.worker()) for _ in range(3)]
            await load.until("good", 200, 4)
            await load.until("wrong", 401, 4)
            # One stream runs through the outage: admitted before, its usage row written after.
            spanning = chat_call("openai", cast["free"], max_tokens=40, stream=True)
            spanning.body["ignore_eos"] = True
            async with client.stream("POST", live.url + spanning.path, json=spanning.body, headers=spanning.headers) as r:
                lines = r.aiter_lines()
                assert (await anext(lines)).startswith("data: ")
                await asyncio.to_thread(postgres.stop)
                stopped = time.monotonic()
                spanning_text = "".join([line async for line in lines])
            spanning_id = r.headers["x-request-id"]
            assert spanning_text.endswith("data: [DONE]")
            await load.until("good", 503, 3, since=stopped)
            await load.until("wrong", 503, 3, since=stopped)
            during = await _metrics(client, live.url)
            health = (await client.get(live.url + "/health")).json()
            await asyncio.to_thread(postgres.start)
            restarted = time.monotonic()
            await load.until("good", 200, 4, since=restarted)
            await load.until("wrong", 401, 4, since=restarted)
            load.running = False
            await asyncio.gather(*workers)
            deadline = time.monotonic() + 30
            while metric(await _metrics(client, live.url), "chatforge_usage_rows_buffered") > 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            after = await _metrics(client, live.url)
    statuses = {s for _, _, s, _, _ in load.answers}
    assert statuses <= {200, 401, 503}, load.summary()  # never a 500
    assert load.count("wrong", 200) == 0, "a wrong key was admitted"
    for _, kind, status, _, body in load.answers:
        if status == 503:
            assert "storage_unavailable" in body or "service_unavailable" in body, body
    assert metric(during, "chatforge_usage_rows_buffered") >= 1  # the spanning stream's row, waiting
    assert metric(during, 'chatforge_storage_up{store="database"}') == 0
    assert health["database"] == "unavailable" and health["status"] == "ok"
    assert metric(after, "chatforge_usage_rows_dropped_total") == 0
    assert metric(after, 'chatforge_storage_up{store="database"}') == 1
    engine = create_engine(postgres.url)
    try:
        written = {row["request_id"] for row in await usage_rows(engine)}
    finally:
        await engine.dispose()
    answered = {rid for _, kind, status, rid, _ in load.answers if status == 200}
    assert answered | {spanning_id} == written  # every admitted request, and nothing else


async def test_redis_stopped_mid_load_fails_closed_then_recovers(api_settings, catalog, postgres, cast,
                                                                 restartable_redis):
    with _server(api_settings, catalog, postgres, restartable_redis.url) as live:
        async with httpx.AsyncClient(timeout=120) as client:
            limited = Load(client, live.url, cast["limited"])
            free = Load(client, live.url, cast["free"])
            workers = [asyncio.create_task(load.worker()) for load in (limited, free, free)]
            await limited.until("good", 200, 4)
            await asyncio.to_thread(restartable_redis.stop)
            stopped = time.monotonic()
            await limited.until("good", 503, 4, since=stopped)
            await free.until("good", 200, 4, since=stopped)  # nothing to ask Redis: it runs on
            during = await _metrics(client, live.url)
            await asyncio.to_thread(restartable_redis.start)
            restarted = time.monotonic()
            await limited.until("good", 200, 4, since=restarted)
            for load in (limited, free):
                load.running = False
            await asyncio.gather(*workers)
    for load in (limited, free):
        assert {s for _, _, s, _, _ in load.answers} <= {200, 401, 503}, load.summary()
        assert load.count("wrong", 200) == 0
    refusals = [body for _, kind, status, _, body in limited.answers if kind == "good" and status == 503]
    assert all("rate_limiter_unavailable" in b or "service_unavailable" in b for b in refusals), refusals[:3]
    assert free.count("good", 503) == 0
    assert metric(during, 'chatforge_storage_up{store="redis"}') == 0


async def test_redis_away_with_local_fallback_limits_in_process(api_settings, catalog, postgres, cast,
                                                               restartable_redis):
    with _server(api_settings, catalog, postgres, restartable_redis.url, redis_unavailable="local") as live:
        async with httpx.AsyncClient(timeout=120) as client:
            call = chat_call("openai", cast["tight"], max_tokens=1)
            await asyncio.to_thread(restartable_redis.stop)
            try:
                statuses = [(await client.post(live.url + call.path, json=call.body, headers=call.headers))
                            for _ in range(4)]
            finally:
                await asyncio.to_thread(restartable_redis.start)
    assert [r.status_code for r in statuses] == [200, 200, 429, 429]  # RPM 2, held by this process alone
    assert json.loads(statuses[2].text)["error"]["code"] == "rate_limit_exceeded"
