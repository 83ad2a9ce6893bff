"""`chatforge bench` end to end against scripted servers on real uvicorn: the figures respect
the servers' known delays, the JSON is valid, two servers are measured alternately."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chatforge.cli import app

from .fake_server import MODEL, FakeBehaviour

FIRST, GAP, TOKENS = 0.05, 0.01, 8


def bench(*args: str):
    return CliRunner().invoke(app, ["bench", *args, "--no-progress"], catch_exceptions=False)


def run_json(tmp_path, *args: str, exit_code: int = 0) -> dict:
    out = tmp_path / "r.json"
    result = bench(*args, "--json", str(out))
    assert result.exit_code == exit_code, result.output
    return json.loads(out.read_text())


def test_one_server_two_levels(fake_server, tmp_path):
    url, fake = fake_server(FakeBehaviour(first_delay=FIRST, gap=GAP))
    r = run_json(tmp_path, url + "/v1", "--concurrency", "1,4", "--num-requests", "8",
                 "--output-tokens", str(TOKENS), "--prompt-tokens", "5")
    assert r["servers"] == [{"label": url[len("http://"):], "url": url, "model": MODEL, "json_schema": None}]
    assert [(lv["concurrency"], lv["requests"], lv["failed"]) for lv in r["levels"]] == [(1, 8, 0), (4, 8, 0)]
    for lv in r["levels"]:
        assert lv["output_tokens"] == 8 * TOKENS and lv["usage_reported"]
        # The server cannot send faster than scripted: these are hard lower bounds.
        assert lv["ttft"]["p50"] >= FIRST - 1e-3 and lv["ttft"]["p99"] < FIRST + 2.0
        assert lv["tpot"]["p50"] >= GAP - 1e-3 and lv["tpot"]["p50"] < GAP + 0.5
        assert lv["e2e"]["p50"] >= FIRST + GAP * (TOKENS - 1) - 1e-3
        assert lv["itl"]["count"] == 8 * (TOKENS - 1)
        assert 0 < lv["output_throughput"] <= lv["concurrency"] * TOKENS / (FIRST + GAP * (TOKENS - 1))
        assert lv["request_throughput"] == pytest.approx(lv["output_throughput"] / TOKENS)
    # Four requests in flight only at the second level, and never more.
    assert fake.state.max_in_flight == 4
    assert r["levels"][1]["output_throughput"] > 1.5 * r["levels"][0]["output_throughput"]
    assert r["config"]["concurrency"] == [1, 4] and r["machine"]["cores"] >= 1
    assert r["prefix"] == [] and r["comparisons"] == []

    warmup, *measured = fake.state.bodies
    assert len(measured) == 16 and warmup["max_tokens"] == TOKENS
    for body in measured:
        assert body["model"] == MODEL and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True and body["min_tokens"] == body["max_tokens"] == TOKENS
        assert body["temperature"] == 0.0
        assert len(body["messages"][0]["content"].split()) == 5


def test_table_on_stdout(fake_server):
    url, _ = fake_server(FakeBehaviour(first_delay=0.0, gap=0.0))
    result = bench(url, "--num-requests", "2", "--output-tokens", "3", "--label", "fake")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    throughput_row = next(line for line in lines if "2/2" in line)
    assert throughput_row.split("│")[1:4] == [" fake   ", "    1 ", "     2/2 "]
    assert throughput_row.split("│")[6].strip() == "6"  # 2 requests x 3 tokens, from usage
    metrics = [line.split("│")[3].strip() for line in lines if line.startswith("│")][-4:]
    assert metrics == ["ttft", "itl", "tpot", "e2e"]


def test_without_usage_tokens_are_counted_as_chunks(fake_server, tmp_path):
    url, _ = fake_server(FakeBehaviour(first_delay=0.0, gap=0.0, usage=False))
    r = run_json(tmp_path, url, "--num-requests", "3", "--output-tokens", "6")
    (lv,) = r["levels"]
    assert lv["output_tokens"] == 18 and lv["usage_reported"] is False


def test_non_streaming_requests(fake_server, tmp_path):
    url, fake = fake_server(FakeBehaviour(first_delay=0.02, gap=0.0))
    r = run_json(tmp_path, url, "--no-stream", "--no-fixed-length", "--num-requests", "2", "--output-tokens", "4")
    (lv,) = r["levels"]
    assert lv["output_tokens"] == 8 and lv["itl"] is None
    assert lv["ttft"] == lv["e2e"] and lv["e2e"]["p50"] >= 0.02 - 1e-3
    body = fake.state.bodies[-1]
    assert body["stream"] is False and "stream_options" not in body and "ignore_eos" not in body


def test_compare_two_servers_alternately(fake_server, tmp_path):
    url_a, fast = fake_server(FakeBehaviour(first_delay=0.01, gap=0.005))
    url_b, slow = fake_server(FakeBehaviour(first_delay=0.01, gap=0.04))
    r = run_json(tmp_path, url_a, "--compare", url_b, "--label", "fast", "--compare-label", "slow",
                 "--concurrency", "1,2", "--num-requests", "4", "--output-tokens", "10",
                 "--shared-prefix-tokens", "50", "--prefix-pairs", "2")
    assert [(lv["label"], lv["concurrency"]) for lv in r["levels"]] == [("fast", 1), ("slow", 1), ("fast", 2), ("slow", 2)]
    assert [c["concurrency"] for c in r["comparisons"]] == [1, 2]
    for c in r["comparisons"]:
        assert (c["a"], c["b"]) == ("fast", "slow")
        assert c["output_throughput"] > 1.5 and c["tpot_p50"] < 0.6  # scripted: 8x apart per token
    assert [(p["label"], p["pairs"], p["failed"]) for p in r["prefix"]] == [("fast", 2, 0), ("slow", 2, 0)]
    # The two servers were never busy at the same time.
    for a_start, a_end in fast.state.intervals:
        for b_start, b_end in slow.state.intervals:
            assert a_end <= b_start or b_end <= a_start
    # Both got the same prompts, and each prefix pair's two requests share the system prompt.
    # (Arrival order may differ within a level of concurrency 2.)
    def prompts(fake):
        return sorted(json.dumps(b["messages"]) for b in fake.state.bodies)

    assert len(fast.state.bodies) == 1 + 2 * 2 + 2 * 4 and prompts(fast) == prompts(slow)
    cold, warm = fast.state.bodies[1:3]
    assert cold["messages"][0] == warm["messages"][0] and len(cold["messages"][0]["content"].split()) == 50


def test_failing_server_is_reported_and_exits_non_zero(fake_server, tmp_path):
    url, _ = fake_server(FakeBehaviour(status=500))
    result = bench(url, "--num-requests", "2", "--warmup", "0", "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 1
    (lv,) = json.loads((tmp_path / "r.json").read_text())["levels"]
    assert (lv["requests"], lv["failed"], lv["output_throughput"], lv["ttft"]) == (2, 2, 0.0, None)
    assert lv["errors"][0].startswith("HTTP 500: ") and "scripted failure" in lv["errors"][0]


def test_streams_cut_short_count_as_failures(fake_server, tmp_path):
    url, _ = fake_server(FakeBehaviour(first_delay=0.0, gap=0.0, usage=False, cut_after=3))
    r = run_json(tmp_path, url, "--num-requests", "2", "--output-tokens", "5", "--warmup", "0", exit_code=1)
    (lv,) = r["levels"]
    assert (lv["requests"], lv["failed"], lv["output_tokens"]) == (2, 2, 0)
    assert lv["errors"] == ["the stream ended without a finish_reason (cut short)"]


def test_error_events_mid_stream_count_as_failures(fake_server, tmp_path):
    url, _ = fake_server(FakeBehaviour(first_delay=0.0, gap=0.0, error_after=2))
    r = run_json(tmp_path, url, "--num-requests", "1", "--output-tokens", "5", "--warmup", "0", exit_code=1)
    (lv,) = r["levels"]
    assert (lv["requests"], lv["failed"]) == (1, 1)
    assert lv["errors"] == ['stream error: {"error": {"message": "engine overloaded"}}']


def test_failing_warm_up_stops_the_run(fake_server):
    url, _ = fake_server(FakeBehaviour(status=503))
    result = bench(url, "--num-requests", "2")
    assert result.exit_code == 2 and "warm-up request" in result.output and "HTTP 503" in result.output


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "1,x"], "--concurrency takes integers"),
    (["--concurrency", "0"], "positive integers"),
    (["--prompt-tokens", "0"], "at least one token"),
])
def test_bad_options(fake_server, args, message):
    url, _ = fake_server()
    result = bench(url, *args)
    assert result.exit_code == 2 and message in result.output


def test_unreachable_server():
    result = bench("http://127.0.0.1:9", "--num-requests", "1")
    assert result.exit_code == 2 and "cannot reach http://127.0.0.1:9" in result.output


def test_a_server_against_itself_constrained_by_a_json_schema(fake_server, tmp_path):
    url, fake = fake_server(FakeBehaviour(first_delay=0.0, gap=0.0))
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "array", "items": {"type": "string"}, "minItems": 60}')
    r = run_json(tmp_path, url, "--compare", url, "--label", "free", "--compare-label", "json",
                 "--compare-json-schema", str(schema), "--num-requests", "2", "--output-tokens", "4", "--warmup", "0")
    assert [s["json_schema"] for s in r["servers"]] == [None, {"type": "array", "items": {"type": "string"}, "minItems": 60}]
    formats = [b.get("response_format") for b in fake.state.bodies]
    assert formats.count(None) == 2 and formats.count(
        {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": json.loads(schema.read_text())}}) == 2
    assert [c["a"] + "/" + c["b"] for c in r["comparisons"]] == ["free/json"]


def test_a_schema_that_is_not_json_is_a_usage_error(fake_server):
    url, _ = fake_server(FakeBehaviour())
    result = CliRunner().invoke(app, ["bench", url, "--json-schema", "{not json", "--no-progress"])
    assert result.exit_code == 2 and "--json-schema: the JSON schema is not JSON" in result.output
