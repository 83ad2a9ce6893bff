"""deploy/fleet: the Procfile starts what the README says (PostgreSQL, Redis, two nodes, two
gateways) on the ports its config file names, and every chatforge command in it is one `serve`
accepts. The same topology runs for real in test_fleet.py."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from chatforge.cli import app
from chatforge.settings import load_settings

FOLDER = Path(__file__).parents[2] / "deploy" / "fleet"


def procfile() -> dict[str, str]:
    lines = [line for line in (FOLDER / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split(": ", 1) for line in lines)


def serve_args(command: str) -> list[str]:
    words = shlex.split(command.split("&& exec ", 1)[-1])
    assert words[:2] == ["chatforge", "serve"], command
    return words[2:]


def test_the_procfile_starts_the_stores_two_nodes_and_two_gateways():
    processes = procfile()
    assert set(processes) == {"postgres", "redis", "node1", "node2", "gateway1", "gateway2"}
    settings = load_settings(FOLDER / "chatforge.toml")
    node_ports = {serve_args(processes[n])[serve_args(processes[n]).index("--port") + 1] for n in ("node1", "node2")}
    upstreams = settings.model_entries()[0].upstreams
    assert {u.url.rsplit(":", 1)[1] for u in upstreams} == node_ports and len(upstreams) == 2
    assert "--engine-only" in serve_args(processes["node1"]) and "--gateway" in serve_args(processes["gateway1"])
    assert settings.database_url.endswith(":5433/chatforge") and "5433" in processes["gateway1"]
    assert settings.redis_url.startswith("redis://127.0.0.1:6380") and "--port 6380" in processes["redis"]
    assert settings.fleet.node_token


def test_every_chatforge_command_is_a_valid_serve_command():
    runner = CliRunner()
    for name, command in procfile().items():
        if "chatforge serve" in command:
            # --help after the arguments: typer parses them all, then prints help instead of serving
            result = runner.invoke(app, ["serve", *serve_args(command), "--help"])
            assert result.exit_code == 0, (name, result.output)


def test_the_scripts_are_valid_shell():
    for script in ("postgres.sh", "wait-for.sh"):
        assert subprocess.run(["sh", "-n", str(FOLDER / script)]).returncode == 0
