"""benchmarks/results_md.py renders compare.py's results into RESULTS.md: the goals' verdicts
follow the measured ratios, absent figures say so."""

from __future__ import annotations

import importlib.util
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parents[2] / "benchmarks" / "results_md.py"


def load_renderer():
    spec = importlib.util.spec_from_file_location("results_md", RESULTS_MD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render_results


def level(streams: int, tok_s: float, stream: bool = False) -> dict:
    return {"streams": streams, "requests": 2 * streams, "stream": stream, "tokens": 256 * streams, "wall_s": 1.0,
            "tok_s": tok_s, "ttft_p50_ms": 20.0 if stream else None, "prompt_tokens": 36}


RESULTS = {
    "chatforge": {"levels": [level(1, 150.0), level(32, 700.0), level(1, 140.0, True)], "peak_rss_mib": 420.0,
                  "ttft": {"pairs": 3, "prompt_tokens": 1030, "cold_ms": 900.0, "warm_ms": 45.0},
                  "contention": {"quiet_tok_s": 150.0, "busy_tok_s": 60.0}},
    "llama-server": {"levels": [level(1, 125.0), level(32, 180.0)], "peak_rss_mib": 300.0,
                     "ttft": {"pairs": 3, "prompt_tokens": 1030, "cold_ms": 1000.0, "warm_ms": 60.0},
                     "contention": {"quiet_tok_s": 125.0, "busy_tok_s": 0.5}},
    "machine": {"Model name": "Test CPU"}, "versions": {"chatforge commit": "abc123"},
    "commands": {"chatforge": "chatforge serve --port 1"},
}


def test_the_verdicts_follow_the_ratios():
    md = load_renderer()(RESULTS, "2030-01-01")
    assert "| output tok/s, 1 stream, chatforge ÷ llama-server | >= 1.0x | 1.20x | met |" in md
    assert "| output tok/s, 32 streams, chatforge ÷ llama-server | >= 4.0x | 3.89x | not met |" in md
    assert "| chatforge's 1-stream tok/s beside one busy process ÷ quiet | >= 0.3x | 0.40x | met |" in md
    assert "| TTFT of a 1,000-token prompt, cold, chatforge ÷ llama-server | <= 1.0x | 0.90x | met |" in md
    assert "| chatforge TTFT warm ÷ cold, 1,000-token prompt | <= 0.1x | 0.05x | met |" in md
    assert "| peak RSS (MiB), chatforge / llama-server | reported | 420 / 300 | |" in md
    assert "| llama-server | 125.0 | 0.5 | 0.00x |" in md
    assert "- Model name: Test CPU" in md and "Measured 2030-01-01 by" in md


def test_missing_figures_are_not_measured():
    results = {"chatforge": {"levels": [level(1, 150.0)]}}
    md = load_renderer()(results, "2030-01-01", quick=True)
    assert "| output tok/s, 1 stream, chatforge ÷ llama-server | >= 1.0x | - | not measured |" in md
    assert "--quick: a smoke run" in md
