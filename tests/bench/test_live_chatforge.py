"""`chatforge bench` against a live chatforge serving the bundled model: a tiny workload gives
sane, non-zero figures, exact output lengths and valid JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatforge.cli import app

from .conftest import serve_in_thread

TOKENS = 6


@pytest.fixture(scope="module")
def chatforge_url(tmp_path_factory):
    from chatforge.api.app import create_app
    from chatforge.service.loading import load_catalog
    from chatforge.settings import load_settings

    settings = load_settings(engine={"threads": 1, "max_num_seqs": 8, "kv_cache_mb": 64},
                             database_url=f"sqlite:///{tmp_path_factory.mktemp('bench') / 'chatforge.db'}")
    catalog = load_catalog(settings)
    try:
        with serve_in_thread(create_app(settings, catalog)) as url:
            yield url
    finally:
        for m in catalog.models:
            m.engine.shutdown(0)


def test_bench_against_live_chatforge(chatforge_url, tmp_path):
    out = tmp_path / "live.json"
    result = CliRunner().invoke(app, [
        "bench", chatforge_url, "--concurrency", "1,3", "--num-requests", "3", "--prompt-tokens", "8",
        "--output-tokens", str(TOKENS), "--shared-prefix-tokens", "64", "--prefix-pairs", "1",
        "--no-progress", "--json", str(out),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["servers"][0]["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [(lv["concurrency"], lv["requests"], lv["failed"]) for lv in r["levels"]] == [(1, 3, 0), (3, 3, 0)]
    for lv in r["levels"]:
        # ignore_eos is honoured and usage is reported: exactly the asked length.
        assert lv["usage_reported"] and lv["output_tokens"] == 3 * TOKENS
        assert lv["itl"]["count"] >= 3 * (TOKENS - 1) - 3  # a chunk may carry 2 tokens at a UTF-8 boundary
        for name in ("ttft", "itl", "tpot", "e2e"):
            d = lv[name]
            assert 0 < d["p50"] <= d["p90"] <= d["p99"] < 120, (name, d)
        assert lv["e2e"]["p50"] > lv["ttft"]["p50"]
        assert lv["output_throughput"] > 0 and lv["request_throughput"] == pytest.approx(lv["output_throughput"] / TOKENS)
    (p,) = r["prefix"]
    assert (p["pairs"], p["failed"]) == (1, 0) and p["warm_over_cold"] > 0


def test_bench_compares_chatforge_with_itself_constrained(chatforge_url, tmp_path):
    out = tmp_path / "constrained.json"
    # An array of at least 60 strings cannot be complete within TOKENS tokens: both sides decode exactly TOKENS.
    schema = '{"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 60}'
    result = CliRunner().invoke(app, [
        "bench", chatforge_url, "--compare", chatforge_url, "--label", "free", "--compare-label", "json",
        "--compare-json-schema", schema, "--concurrency", "2", "--num-requests", "2", "--prompt-tokens", "8",
        "--output-tokens", str(TOKENS), "--no-progress", "--json", str(out),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert [(lv["label"], lv["failed"], lv["output_tokens"]) for lv in r["levels"]] == [("free", 0, 2 * TOKENS), ("json", 0, 2 * TOKENS)]
    (c,) = r["comparisons"]
    assert (c["a"], c["b"]) == ("free", "json") and c["output_throughput"] > 0
