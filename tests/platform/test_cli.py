"""The admin commands, through typer's runner and once as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from chatforge.platform.cli import app
from chatforge.platform.gate import Platform
from chatforge.platform.metering import UsageRecord
from chatforge.settings import ModelPrice

runner = CliRunner()


def cli(url: str, *args: str, code: int = 0):
    result = runner.invoke(app, [*args, "--database-url", url])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def cli_json(url: str, *args: str):
    return json.loads(cli(url, *args, "--json").stdout.strip().splitlines()[-1])


def test_admin_flow_as_json(database_url):
    assert cli_json(database_url, "accounts", "create", "alice")["name"] == "alice"
    assert cli_json(database_url, "accounts", "create", "bob")["id"] == 2
    made = cli_json(database_url, "keys", "create", "--account", "alice", "--account", "bob", "--rpm", "5",
                    "--tpm", "100", "--models", "smollm2, other", "--expires", "2030-01-01", "--name", "ci")
    assert re.fullmatch(r"cf-[A-Za-z0-9]{8}_[A-Za-z0-9]{32}", made["key"])
    assert made["prefix"] == made["key"][:11]
    assert {k: made[k] for k in ("accounts", "rpm", "tpm", "models", "state", "expires_at", "revoked_at", "name")} == {
        "accounts": ["alice", "bob"], "rpm": 5, "tpm": 100, "models": ["smollm2", "other"], "state": "active",
        "expires_at": "2030-01-01T00:00:00+00:00", "revoked_at": None, "name": "ci",
    }
    listed = cli_json(database_url, "keys", "list")
    assert [k["prefix"] for k in listed] == [made["prefix"]] and "key" not in listed[0]
    assert cli_json(database_url, "keys", "list", "--account", "carol") == []

    product = cli_json(database_url, "products", "create", "--id", "10775", "--account", "bob", "--model",
                       "smollm2", "--model", "other", "--rpm", "3", "--tpm", "900")
    assert product == {"id": 10775, "account": "bob", "name": None, "models": ["smollm2", "other"],
                       "default_model": "smollm2", "rpm": 3, "tpm": 900}
    assert cli_json(database_url, "products", "list", "--account", "bob") == [product]
    deployment = cli_json(database_url, "deployments", "create", "--id", "egp-1", "--account", "alice",
                          "--model", "smollm2", "--param", "temperature=0.2", "--param", "stop_sequences=[\"##\"]",
                          "--param", "style=terse")
    assert deployment["parameters"] == {"temperature": 0.2, "stop_sequences": ["##"], "style": "terse"}
    assert cli_json(database_url, "deployments", "list") == [deployment]
    assert [a["name"] for a in cli_json(database_url, "accounts", "list")] == ["alice", "bob"]

    revoked = cli_json(database_url, "keys", "revoke", made["prefix"])
    assert revoked["state"] == "revoked" and revoked["revoked_at"] is not None
    assert cli_json(database_url, "usage", "--by", "model") == []


def test_people_get_sentences_and_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert cli(url, "accounts", "create", "alice").stdout == "Created account alice (id 1).\n"
    shown = cli(url, "keys", "create", "--account", "alice").stdout.splitlines()
    assert re.fullmatch(r"Created key (cf-\w{8}) for alice\.", shown[0])
    assert shown[1].startswith(shown[0][12:23] + "_") and shown[2] == "Store it now: it is not shown again."
    table = cli(url, "keys", "list").stdout
    assert shown[0][12:23] in table and "active" in table and shown[1] not in table


def test_errors_are_reported_with_a_status(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cli(url, "accounts", "create", "alice")
    assert cli(url, "accounts", "create", "alice", code=1).stderr == "error: account 'alice' already exists\n"
    assert "no account named 'ghost'" in cli(url, "keys", "create", "--account", "ghost", code=1).stderr
    assert "rpm must be at least 1" in cli(url, "keys", "create", "--account", "alice", "--rpm", "0", code=1).stderr
    assert "--expires wants an ISO date" in cli(url, "keys", "create", "--account", "alice", "--expires", "soon", code=2).stderr
    assert "Missing option '--account'" in cli(url, "keys", "create", code=2).stderr
    assert "not 'dialect'" in cli(url, "usage", "--by", "dialect", code=1).stderr
    assert "--param wants KEY=VALUE" in cli(url, "deployments", "create", "--id", "d", "--account", "alice",
                                           "--model", "m", "--param", "oops", code=1).stderr
    assert "unsupported database 'mysql'" in cli("mysql://u@h/d", "accounts", "list", code=1).stderr


def test_database_url_comes_from_the_environment(tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    result = runner.invoke(app, ["accounts", "create", "carol", "--json"], env={"CHATFORGE_DATABASE_URL": url})
    assert result.exit_code == 0
    assert [a["name"] for a in cli_json(url, "accounts", "list")] == ["carol"]


async def _meter(url: str, key: str) -> list[float]:
    """Three requests by `key`, metered as the API would, and one refused by a rate limit; the
    three requests' costs."""
    price = ModelPrice(input=0.5, output=1.5)  # the service prices each request once, so the record carries it
    async with Platform(url) as platform:
        principal = await platform.authenticate(key, None)
        costs = []
        for n in range(1, 4):
            record = UsageRecord(request_id=f"r{n}", model="smollm2", dialect="openai", prompt_tokens=100 * n,
                                 completion_tokens=10 * n, latency_s=0.1, status="completed",
                                 estimated_cost=price.cost(100 * n, 10 * n),
                                 key_id=principal.key.id, account_id=principal.account.id)
            await platform.record_usage(record)
            costs.append(record.estimated_cost)
        await platform.record_usage(UsageRecord(
            request_id="r4", model="smollm2", dialect="openai", prompt_tokens=0, completion_tokens=0, latency_s=0.001,
            status="rate_limited", key_id=principal.key.id, account_id=principal.account.id))
    return costs


def test_usage_command_sums_the_metered_requests(database_url):
    cli(database_url, "accounts", "create", "alice")
    key = cli_json(database_url, "keys", "create", "--account", "alice")["key"]
    costs = asyncio.run(_meter(database_url, key))
    assert costs == [0.000065, 0.00013, 0.000195]
    totals = {"requests": 3, "prompt_tokens": 600, "completion_tokens": 60,
              "estimated_cost": pytest.approx(sum(costs), rel=1e-12), "rate_limited": 1}
    assert cli_json(database_url, "usage", "--by", "key") == [{"key": key[:11], **totals}]
    assert cli_json(database_url, "usage") == [{"account": "alice", **totals}]
    assert cli_json(database_url, "usage", "--since", "2999-01-01") == []


def test_a_real_process_reads_and_writes_the_same_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'real.db'}"
    command = [sys.executable, "-m", "chatforge.platform.cli", "keys", "create", "--account", "alice", "--json"]
    cli(url, "accounts", "create", "alice")
    done = subprocess.run(command, env={**os.environ, "CHATFORGE_DATABASE_URL": url},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout.strip().splitlines()[-1])["key"]
    assert [k["prefix"] for k in cli_json(url, "keys", "list")] == [key[:11]]
    asyncio.run(_meter(url, key))
    assert cli_json(url, "usage", "--by", "key")[0]["requests"] == 3
