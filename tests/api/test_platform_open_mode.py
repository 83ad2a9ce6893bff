"""Open mode (DESIGN §6): no key is needed only while no key exists AND the server listens on
loopback, or the operator set allow_open_remote. The first key created ends it, on a running
server too. `chatforge serve` refuses to listen beyond loopback without keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from chatforge.cli import open_remote_refusal
from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade

from .platform_fixtures import DIALECTS, MODEL, chat_call, live_app, run_sql, usage_row

ANY_IDS = {"legacy": 10775, "successor": 10775, "egp": "my-deployment"}  # the providers' own examples


async def create_key(url: str) -> str:
    async def work(conn):
        await accounts.create_account(conn, "first")
        return (await keys.create_key(conn, ["first"]))[0]

    await upgrade(url)
    return await run_sql(url, work)


def post(http: httpx.Client, route: str, key: str | None) -> httpx.Response:
    c = chat_call(route, key, scope=ANY_IDS.get(route))
    return http.post(c.path, json=c.body, headers=c.headers)


async def test_open_until_the_first_key(tmp_path, api_settings, catalog):
    url = f"sqlite:///{tmp_path / 'open.db'}"
    settings = api_settings.model_copy(update={"database_url": url})
    with live_app(settings, catalog) as (live, _), httpx.Client(base_url=live.url, timeout=120) as http:
        for route in DIALECTS:
            assert post(http, route, None).status_code == 200
            assert post(http, route, "whatever-the-page-says").status_code == 200
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [MODEL, "smollm2"]  # open mode: every model
        key = await create_key(url)
        for route in DIALECTS:
            refused = post(http, route, None)
            assert refused.status_code == 401, route
            assert post(http, route, "whatever-the-page-says").status_code == 401
        assert post(http, "openai", key).status_code == 200
        assert http.get("/v1/models").status_code == 401


@pytest.mark.parametrize("allow, status", [(False, 401), (True, 200)])
def test_a_remote_server_without_keys_is_closed_unless_allowed(allow, status, tmp_path, api_settings, catalog):
    settings = api_settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'remote.db'}",
                                               "host": "0.0.0.0", "allow_open_remote": allow})
    with live_app(settings, catalog) as (live, _), httpx.Client(base_url=live.url, timeout=120) as http:
        for route in DIALECTS:
            assert post(http, route, None).status_code == status


def test_the_start_up_check(tmp_path, api_settings):
    remote = api_settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'check.db'}", "host": "0.0.0.0"})
    message = asyncio.run(open_remote_refusal(remote))
    assert message.startswith("refusing to serve on 0.0.0.0 without API keys")
    assert asyncio.run(open_remote_refusal(remote.model_copy(update={"allow_open_remote": True}))) is None
    assert asyncio.run(open_remote_refusal(remote.model_copy(update={"host": "127.0.0.1"}))) is None
    assert asyncio.run(open_remote_refusal(remote.model_copy(update={"host": "::1"}))) is None
    asyncio.run(create_key(remote.database_url))
    assert asyncio.run(open_remote_refusal(remote)) is None


def test_serve_refuses_to_listen_beyond_loopback_without_keys(tmp_path):
    db = tmp_path / "serve.db"
    proc = subprocess.run(
        [sys.executable, "-m", "chatforge.cli", "serve", "--host", "0.0.0.0", "--port", "1",
         "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "error: refusing to serve on 0.0.0.0 without API keys" in proc.stderr
    assert "--allow-open-remote" in proc.stderr
    assert "chatforge serving" not in proc.stdout  # it stopped before loading any model


async def test_open_mode_meters_ids_the_database_cannot_hold(tmp_path, api_settings, catalog):
    """Open mode runs any product or deployment id; one too large for the database is metered
    without it instead of failing the usage writer (which would lose its whole batch)."""
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    settings = api_settings.model_copy(update={"database_url": url})
    engine = create_engine(url)
    try:
        with live_app(settings, catalog) as (live, _), httpx.Client(base_url=live.url, timeout=120) as http:
            for route, scope, stored in [("legacy", 10**20, None), ("successor", 2**31, None), ("legacy", 2**31 - 1, 2**31 - 1),
                                         ("egp", "d" * 201, None), ("egp", "d" * 200, "d" * 200)]:
                c = chat_call(route, None, scope=scope)
                r = http.post(c.path, json=c.body, headers=c.headers)
                assert r.status_code == 200, r.text
                row = await usage_row(engine, r.headers["x-request-id"])
                assert row["status"] == "completed"
                assert row["deployment_id" if route == "egp" else "product_id"] == stored
    finally:
        await engine.dispose()
