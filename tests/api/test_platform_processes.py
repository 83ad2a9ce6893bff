"""Two real `chatforge serve` processes, as two gateways behind a load balancer would be: one
PostgreSQL database and one Redis between them. The limits hold across both (exactly 5 of 20
requests against RPM 5; TPM likewise), and neither their logs nor a dump of the database holds a
full key."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import redis

from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade

from .platform_fixtures import (  # noqa: F401 - postgres_server, redis_url and fresh_redis_url are fixtures
    DIALECTS, chat_call, free_port, fresh_redis_url, postgres_server, redis_url, run_sql, usage_rows,
)

SCOPES = {"legacy": 1, "successor": 1, "egp": "d-acme"}
START_TIMEOUT_S = 240  # two model loads side by side on a busy 2-core machine


@dataclass
class Gateways:
    urls: list[str]
    logs: list[Path]
    database_url: str
    keys: dict[str, str]  # name -> full key
    prefixes: dict[str, str]


async def new_key(url: str, name: str, **options) -> tuple[str, str]:
    async def work(conn):
        secret, key = await keys.create_key(conn, ["acme"], name=name, **options)
        return secret, key.prefix

    return await run_sql(url, work)


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"chatforge serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"chatforge serve did not become healthy in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def gateways(postgres_server, redis_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateways")
    database_url = postgres_server.create_database()
    shared_redis = redis_url.rsplit("/", 1)[0] + "/15"  # a Redis database of this module's own

    async def seed():
        await upgrade(database_url)

        async def work(conn):
            await accounts.create_account(conn, "acme")
            await accounts.create_product(conn, 1, "acme", ["smollm2"])
            await accounts.create_deployment(conn, "d-acme", "acme", "smollm2")

        await run_sql(database_url, work)
        return {"probe": await new_key(database_url, "probe"), "rpm5": await new_key(database_url, "rpm5", rpm=5)}

    made = asyncio.run(seed())
    with redis.Redis.from_url(shared_redis) as client:
        client.flushdb()
    env = {**os.environ, "CHATFORGE_ENGINE__KV_CACHE_MB": "64", "CHATFORGE_ENGINE__MAX_NUM_SEQS": "16",
           "CHATFORGE_LOG_LEVEL": "info"}
    processes, urls, logs = [], [], []
    try:
        for i in range(2):
            port, log = free_port(), folder / f"gateway{i}.log"
            command = [sys.executable, "-m", "chatforge.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                       "--database-url", database_url, "--redis-url", shared_redis, "--threads", "1"]
            with log.open("w") as out:
                processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env))
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        for url, process, log in zip(urls, processes, logs):
            wait_healthy(url, process, log)
        yield Gateways(urls, logs, database_url, {name: secret for name, (secret, _) in made.items()},
                       {name: prefix for name, (_, prefix) in made.items()})
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def fire(calls: list[tuple[str, object]]) -> list[httpx.Response]:
    """(base url, Call) pairs, all at once."""
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(base + c.path, json=c.body, headers=c.headers) for base, c in calls))


async def test_rpm_5_holds_across_two_processes(gateways):
    key = gateways.keys["rpm5"]
    calls = [(gateways.urls[i % 2], chat_call(route, key, scope=SCOPES.get(route)))
             for i, route in enumerate(list(DIALECTS) * 4)]
    responses = await fire(calls)
    statuses = [r.status_code for r in responses]
    refused = len(calls) - 5  # four on each route, spread over both gateways: 5 admitted
    assert (statuses.count(200), statuses.count(429)) == (5, refused), [r.text for r in responses if r.status_code not in (200, 429)]
    for r in responses:
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        if r.status_code == 429:
            assert 1 <= int(r.headers["Retry-After"]) <= 60
    served = {base for (base, _), r in zip(calls, responses)}
    assert served == set(gateways.urls)
    engine = create_engine(gateways.database_url)
    try:
        for _ in range(100):
            rows = [row for row in await usage_rows(engine)
                    if row["key_prefix"] == gateways.prefixes["rpm5"] and row["status"] != "rate_limited"]
            if len(rows) == 5:
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    assert sorted(row["request_id"] for row in rows) == sorted(
        r.headers["x-request-id"] for r in responses if r.status_code == 200)


async def test_tpm_holds_across_two_processes(gateways):
    probe = chat_call("openai", gateways.keys["probe"])
    first = httpx.post(gateways.urls[0] + probe.path, json=probe.body, headers=probe.headers, timeout=120)
    per_request = first.json()["usage"]["prompt_tokens"] + 1
    secret, prefix = await new_key(gateways.database_url, "tpm", tpm=3 * per_request)
    gateways.keys["tpm"], gateways.prefixes["tpm"] = secret, prefix
    responses = await fire([(gateways.urls[i % 2], chat_call("openai", secret)) for i in range(12)])
    statuses = [r.status_code for r in responses]
    assert (statuses.count(200), statuses.count(429)) == (3, 9)
    assert sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in responses if r.status_code == 200) == [
        0, per_request, 2 * per_request]


async def test_a_revoked_or_expired_key_is_refused_by_every_gateway_at_once(gateways):
    """Keys are looked up on every request, never cached: no gateway serves a dead key again."""
    expiry = datetime.now(timezone.utc) + timedelta(seconds=3)
    made = {name: await new_key(gateways.database_url, name, **options)
            for name, options in (("revoked", {}), ("expired", {"expires_at": expiry}))}
    for secret, _ in made.values():
        for url in gateways.urls:
            assert httpx.post(url + "/v1/chat/completions", json=chat_call("openai", secret).body,
                              headers=chat_call("openai", secret).headers, timeout=120).status_code == 200

    async def revoke(conn):
        await keys.revoke_key(conn, made["revoked"][1])

    await run_sql(gateways.database_url, revoke)
    await asyncio.sleep(max(0.0, (expiry - datetime.now(timezone.utc)).total_seconds()))
    for name, (secret, _) in made.items():
        for url in gateways.urls:
            refused = httpx.post(url + "/v1/chat/completions", json=chat_call("openai", secret).body,
                                 headers=chat_call("openai", secret).headers, timeout=120)
            assert refused.status_code == 401, (name, url)
            assert refused.json()["error"]["message"] == f"This API key is {name}."


def test_no_full_key_in_the_logs_or_the_database(gateways, postgres_server):
    """After the requests above (a refused unknown key too): the logs name keys by prefix only,
    each request's line carries its id, and no prompt or key is in the logs or the metrics."""
    stranger = "cf-ZZZZZZZZ_" + "Q" * 32
    assert httpx.post(gateways.urls[1] + "/v1/chat/completions", json=chat_call("openai", None).body,
                      headers={"Authorization": f"Bearer {stranger}"}, timeout=60).status_code == 401
    logs = "\n".join(log.read_text() for log in gateways.logs)
    assert "status=200" in logs  # one line per request was written
    for name, secret in gateways.keys.items():
        assert secret not in logs and secret.split("_")[1] not in logs, name
    assert stranger not in logs and "Q" * 32 not in logs
    assert f"key={gateways.prefixes['rpm5']}" in logs
    assert f"key={gateways.prefixes['rpm5']} status=429 code=rate_limit_exceeded" in logs  # refusals too
    assert re.search(r"\[(chatcmpl|llm|egp)-[0-9a-f]{24}\] request \1-[0-9a-f]{24} ", logs)  # its id on its line
    prompt = chat_call("openai", None).body["messages"][0]["content"]
    metrics = "\n".join(httpx.get(url + "/metrics", timeout=60).text for url in gateways.urls)
    for text in (logs, metrics):
        assert prompt not in text
        for secret in (*gateways.keys.values(), stranger):
            assert secret not in text and secret.split("_")[1] not in text
    database = gateways.database_url.rsplit("/", 1)[1]
    dump = subprocess.run([str(postgres_server.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres_server.port),
                           "-U", postgres_server.user, database], capture_output=True, text=True, check=True).stdout
    assert gateways.prefixes["rpm5"] in dump
    for name, secret in gateways.keys.items():
        assert secret not in dump and secret.split("_")[1] not in dump, name
