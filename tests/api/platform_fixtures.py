"""What the route-level platform tests share: the real PostgreSQL and Redis of the platform
suite, a database of each kind, a seeded cast (accounts, keys, products, deployments), and a live
server built around the session's catalog with its own database.

The servers come from tests/platform/conftest.py, loaded by path: that folder is deliberately not
a package (it would shadow the standard library's `platform`), so it cannot be imported by name.
Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from chatforge.api.app import create_app
from chatforge.platform import accounts, keys
from chatforge.platform import tables as t
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade

from .conftest import LiveServer

_spec = importlib.util.spec_from_file_location(
    "chatforge_platform_servers", Path(__file__).parents[1] / "platform" / "conftest.py")
_servers = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_servers)

postgres_server = _servers.postgres_server
redis_url = _servers.redis_url
free_port = _servers.free_port

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
Q = [{"role": "user", "content": "What is the capital of France?"}]

# Redis database 0 holds the platform suite's namespaced keys; each server here gets a database
# of its own (1..15), emptied first, so that key ids repeating across test databases never share
# a budget.
_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def fresh_redis_url(redis_url) -> str:
    url = redis_url.rsplit("/", 1)[0] + f"/{next(_redis_dbs)}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A brand-new database of each kind: a file that does not exist yet, an empty PostgreSQL
    database. The server's start migrates it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'platform.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@dataclass(frozen=True)
class Cast:
    """Accounts alice, bob and carol. `both` is a key of alice and bob (alice first); `carol` a
    key of carol's. Product 1 and deployment "d-bob" belong to bob, product 2 and deployment
    "d-carol" to carol."""

    both: str
    carol: str
    both_prefix: str
    carol_prefix: str


async def seed(url: str, **both_options) -> Cast:
    await upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for name in ("alice", "bob", "carol"):
                await accounts.create_account(conn, name)
            both, both_key = await keys.create_key(conn, ["alice", "bob"], **both_options)
            carol, carol_key = await keys.create_key(conn, ["carol"])
            await accounts.create_product(conn, 1, "bob", ["smollm2"], name="bob's")
            await accounts.create_product(conn, 2, "carol", [MODEL], name="carol's")
            await accounts.create_deployment(conn, "d-bob", "bob", "smollm2")
            await accounts.create_deployment(conn, "d-carol", "carol", MODEL)
    finally:
        await engine.dispose()
    return Cast(both, carol, both_key.prefix, carol_key.prefix)


async def run_sql(url: str, work):
    """`work(conn)` in one transaction on the database at `url`."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


@contextmanager
def live_app(settings, catalog):
    """A live server on the session's catalog; yields (server, app)."""
    app = create_app(settings, catalog)
    with LiveServer(app) as live:
        yield live, app


_USAGE = (
    select(t.usage, t.api_keys.c.prefix.label("key_prefix"), t.accounts.c.name.label("account"))
    .select_from(t.usage.outerjoin(t.api_keys, t.api_keys.c.id == t.usage.c.key_id)
                 .outerjoin(t.accounts, t.accounts.c.id == t.usage.c.account_id))
)


async def usage_row(engine, request_id: str, timeout_s: float = 10.0) -> dict:
    """The usage row of `request_id` with its key's prefix and its account's name. The server
    writes rows from a queue, a few milliseconds after the response: wait for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with engine.connect() as conn:
            rows = (await conn.execute(_USAGE.where(t.usage.c.request_id == request_id))).all()
        if rows:
            assert len(rows) == 1, f"{len(rows)} usage rows for {request_id}"
            return dict(rows[0]._mapping)
        if time.monotonic() > deadline:
            raise AssertionError(f"no usage row for {request_id} after {timeout_s} s")
        await asyncio.sleep(0.05)


async def usage_rows(engine) -> list[dict]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(_USAGE.order_by(t.usage.c.id))]


@dataclass(frozen=True)
class Call:
    """One chat request on one route, ready for `client.post(call.path, json=call.body, headers=call.headers)`."""

    path: str
    body: dict
    headers: dict[str, str]


# The generating routes: name -> the dialect its usage rows carry.
DIALECTS = {"openai": "openai", "deepinfra": "openai", "legacy": "infomaniak", "successor": "infomaniak_openai",
            "egp": "egp", "completions": "openai"}


def chat_call(route: str, key: str | None, account: str | None = None, scope: int | str | None = None, *,
              max_tokens: int = 1, stream: bool = False, prompt: str = Q[0]["content"]) -> Call:
    """A short generating request on `route` (`scope`: the product id or deployment id in the path),
    with the key in the route's own header."""
    headers = {}
    if key is not None:
        headers["x-api-key" if route == "egp" else "Authorization"] = key if route == "egp" else f"Bearer {key}"
    if account is not None:
        headers["x-selected-account-id"] = account
    messages = [{"role": "user", "content": prompt}]
    extra = {"stream": True} if stream else {}
    path, body = {
        "openai": ("/v1/chat/completions", {"model": "smollm2", "messages": messages, "max_tokens": max_tokens}),
        "deepinfra": ("/v1/openai/chat/completions", {"model": "smollm2", "messages": messages, "max_tokens": max_tokens}),
        "legacy": (f"/1/llm/{scope}", {"messages": messages, "max_new_tokens": max_tokens}),
        "successor": (f"/1/ai/{scope}/openai/chat/completions",
                      {"model": "smollm2", "messages": messages, "max_tokens": max_tokens}),
        "egp": (f"/v4/models/{scope}/chat-completions", {"chat_history": [], "prompt": prompt, "max_tokens": max_tokens}),
        "completions": ("/v1/completions", {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens}),
    }[route]
    return Call(path, {**body, **extra}, headers)


def bearer(key: str, account: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if account is not None:
        headers["x-selected-account-id"] = account
    return headers


def egp_headers(key: str, account: str | None = None) -> dict[str, str]:
    headers = {"x-api-key": key}
    if account is not None:
        headers["x-selected-account-id"] = account
    return headers


def client(live) -> httpx.Client:
    return httpx.Client(base_url=live.url, timeout=120)
