"""The command line of a fleet: `chatforge nodes` probes without generating and fails when a model
has no healthy upstream; `serve --gateway` refuses a model it would have to load; the two roles
exclude each other; `--upstream` takes a kind."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.settings import UpstreamEntry, load_settings

from .fake_node import FakeNode
from .servers import ThreadServer, unused_url

runner = CliRunner()
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_nodes_lists_health_and_fails_without_a_healthy_upstream():
    fake = FakeNode(MODEL)
    dead = unused_url()
    with ThreadServer(fake.app()) as live:
        ok = runner.invoke(app, ["nodes", "--upstream", live.url, "--upstream", f"vllm={dead}", "--json"])
        assert ok.exit_code == 0, ok.output
        rows = {r["url"]: r for r in json.loads(ok.output.strip().splitlines()[-1])}
        assert rows[live.url]["status"] == "healthy" and rows[live.url]["kind"] == "chatforge"
        assert rows[dead]["status"] == "unhealthy" and rows[dead]["kind"] == "vllm" and rows[dead]["detail"] == "ConnectError"
    assert fake.served == 0  # probes never generate
    down = runner.invoke(app, ["nodes", "--upstream", dead, "--json"])
    assert down.exit_code == 1


def test_nodes_without_upstreams_says_so():
    result = runner.invoke(app, ["nodes"])
    assert result.exit_code == 1 and "no model has upstreams" in result.output


def test_a_gateway_refuses_a_model_without_upstreams(tmp_path):
    result = runner.invoke(app, ["serve", "--gateway", "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert result.exit_code == 1 and "--gateway loads no weights" in result.output


def test_a_node_beyond_loopback_needs_a_node_token(tmp_path):
    result = runner.invoke(app, ["serve", "--engine-only", "--host", "0.0.0.0", "--database-url",
                                 f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert result.exit_code == 1 and "without a node token" in result.output


def test_the_roles_exclude_each_other():
    result = runner.invoke(app, ["serve", "--gateway", "--engine-only"])
    assert result.exit_code == 1 and "pick one" in result.output


def test_upstream_flags_and_config_entries():
    assert UpstreamEntry.parse_flag("http://a:1") == UpstreamEntry(url="http://a:1", kind="chatforge")
    assert UpstreamEntry.parse_flag("llamacpp=http://b:2").kind == "llamacpp"
    settings = load_settings(models=[{"path": "smollm2", "upstreams": [{"url": "http://a:1", "kind": "vllm", "weight": 2}]}],
                             role="gateway")
    assert settings.model_entries()[0].upstreams[0].weight == 2
    assert settings.key_cache_s == 2.0 and load_settings().key_cache_s == 0.0
    assert not settings.runs_locally(settings.model_entries()[0])
    assert load_settings(role="node", models=settings.models).runs_locally(settings.model_entries()[0])
