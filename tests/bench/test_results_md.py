"""benchmarks/results_md.py renders a real `chatforge bench --compare` JSON (two scripted
servers) into RESULTS.md tables and goal verdicts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from typer.testing import CliRunner

from chatforge.cli import app

from .fake_server import FakeBehaviour

RESULTS_MD = Path(__file__).resolve().parents[2] / "benchmarks" / "results_md.py"


def load_renderer():
    spec = importlib.util.spec_from_file_location("results_md", RESULTS_MD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render_results


def test_results_markdown_from_a_compare_run(fake_server, tmp_path):
    ours, _ = fake_server(FakeBehaviour(first_delay=0.005, gap=0.002))
    peer, _ = fake_server(FakeBehaviour(first_delay=0.005, gap=0.02, usage=False))
    out = tmp_path / "decode.json"
    args = ["--concurrency", "1,2", "--num-requests", "2", "--output-tokens", "6", "--shared-prefix-tokens", "20",
            "--prefix-pairs", "1"]
    result = CliRunner().invoke(app, ["bench", ours, "--compare", peer, "--label", "chatforge", "--compare-label",
                                      "llama-cpp-python", *args, "--no-progress", "--json", str(out)])
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text())
    md = load_renderer()({"decode": run, "prefix": run}, {"decode": "chatforge bench URL ...", "prefix": "p"},
                         {"Model name": "Test CPU"}, {"chatforge": "abc123"}, "2030-01-01", quick=False)

    # The scripted servers set the speeds, the machine's load the measured ratio (a busy CI runner
    # once measured 0.35x): the verdict must follow the figure.
    c1 = next(c for c in run["comparisons"] if c["concurrency"] == 1)["output_throughput"]
    verdict = "met" if c1 >= 0.7 else "not met"
    assert f"| output tok/s at 1 stream, chatforge ÷ llama-cpp-python | >= 0.7x | {c1:.2f}x | {verdict} |" in md
    assert "| output tok/s at 32 streams, chatforge ÷ llama-cpp-python | >= 5.0x | - | not measured |" in md
    warm_cold = run["prefix"][0]["warm_over_cold"]
    verdict = "met" if warm_cold <= 0.2 else "not met"
    assert f"| chatforge TTFT warm ÷ cold, 1,000-token shared prefix | <= 0.2x | {warm_cold:.2f}x | {verdict} |" in md
    peer_rows = [line for line in md.splitlines() if line.startswith("| llama-cpp-python | ")]
    assert len(peer_rows) == 3 and all(" * |" in row for row in peer_rows[:2])  # its tokens were counted as chunks
    assert "- Model name: Test CPU" in md and "Measured 2030-01-01 by" in md
