"""The OpenAI dialect on the wire: error envelopes, SSE framing, disconnects, metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .conftest import metric

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MSG = [{"role": "user", "content": "Write a long essay about the sea."}]


def post(http, body, path="/v1/chat/completions"):
    return http.post(path, json=body)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": MODEL, "messages": MSG, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": MSG, "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": MSG, "stream": 0}, "stream"),
        ({"model": MODEL, "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": MSG, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"model": MODEL, "messages": MSG, "top_logprobs": 2}, "top_logprobs"),
        ({"model": MODEL, "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": MSG, "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"model": MODEL, "messages": MSG, "frobnicate": True}, "frobnicate"),
        ({"model": MODEL, "messages": MSG, "tools": [{"type": "function", "function": {"name": "f f"}}]}, "tools[0].function.name"),
        ({"model": MODEL, "messages": MSG, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}}, "response_format"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"messages": MSG}, "model"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        # union fields: the member pydantic tried ("str", "list[...]") is no part of the name
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": MODEL, "messages": MSG, "stop": 5}, "stop"),
        ({"model": MODEL, "messages": MSG, "chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
    ],
)
def test_bad_input_gets_a_400_in_openai_envelope(http, body, param):
    r = post(http, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def _json_schema(spec):
    return {"model": MODEL, "messages": MSG, "max_tokens": 1, "response_format": {"type": "json_schema", **spec}}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/1/ai/10775/openai/chat/completions"])
@pytest.mark.parametrize("spec, param", [
    ({"json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"json_schema": {"name": "x", "schema": None}}, "response_format.json_schema.schema"),
    ({"json_schema": {"name": "x", "strict": True}}, "response_format.json_schema.schema"),
    ({"json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name"),
    ({"json_schema": {"name": "x", "schema": {}, "strict": "yes"}}, "response_format.json_schema.strict"),
    ({"json_schema": {"name": "x", "schema": {}, "nope": 1}}, "response_format.json_schema.nope"),
    ({}, "response_format.json_schema"),
])
def test_a_json_schema_format_s_errors_name_the_field_as_sent(http, path, spec, param):
    """Not the union member pydantic tried (`response_format.json_schema.json_schema.name`)."""
    r = post(http, _json_schema(spec), path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(("Unrecognized", "Missing", param)), err


def test_a_json_schema_format_of_true_allows_any_json(http):
    r = post(http, _json_schema({"json_schema": {"name": "x", "schema": True}}))
    assert r.status_code == 200, r.text


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/1/ai/10775/openai/chat/completions"])
@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": None}], "messages[0].content"),
    ([{"role": "system"}, {"role": "user", "content": "hi"}], "messages[0].content"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "and?"}],
     "messages[1].content"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "call_1", "content": None}], "messages[2].content"),
])
def test_null_content_is_a_400_naming_the_message(http, path, messages, param):
    """As OpenAI: only an assistant message with tool_calls may have null (or no) content."""
    r = post(http, {"model": MODEL, "messages": messages, "max_tokens": 1}, path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and "content" in err["message"]


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def _with_call(arguments):
    call = {**CALL, "function": {"name": "f", "arguments": arguments}}
    return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/1/ai/10775/openai/chat/completions"])
@pytest.mark.parametrize("change, param", [
    # refused by the request schema
    ({"messages": _with_call(5)}, "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}, "messages[1].role"),
    ({"tools": [{**TOOL, "function": {"name": "f", "parameters": 5}}]}, "tools[0].function.parameters"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    # refused by chatforge's own checks
    ({"messages": _with_call("not json")}, "messages[1].tool_calls[0].function.arguments"),
    ({"tools": [{**TOOL, "function": {"name": "f", "parameters": {"type": "array"}}}]}, "tools[0].function.parameters"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}, "messages[1].content"),
])
def test_a_nested_param_is_named_as_openai_names_it(http, path, change, param):
    """Keys joined by dots, list positions in brackets, whichever check refused the field."""
    r = post(http, {"model": MODEL, "messages": MSG, "max_tokens": 1, **change}, path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_an_assistant_turn_of_tool_calls_may_have_null_content(http):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "done"}]
    r = post(http, {"model": MODEL, "messages": messages, "max_tokens": 1})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/1/ai/10775/openai/chat/completions"])
@pytest.mark.parametrize("body, param", [
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f"}}]}]}, "messages[1].tool_calls[0].function.arguments"),
    ({"model": MODEL, "messages": MSG, "tools": [{"type": "function", "function": {"parameters": {}}}]},
     "tools[0].function.name"),
    (_json_schema({"json_schema": {"name": "x"}}), "response_format.json_schema.schema"),
])
def test_a_missing_field_is_missing_required_parameter(http, path, body, param):
    """OpenAI's code and message for a required field not sent."""
    r = post(http, body, path)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": f"Missing required parameter: '{param}'.", "type": "invalid_request_error",
                                 "param": param, "code": "missing_required_parameter"}


def test_a_missing_prompt_is_missing_required_parameter_on_completions(http):
    r = post(http, {"model": MODEL}, "/v1/completions")
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter", r.text
    assert r.json()["error"]["param"] == "prompt"


def test_invalid_json_is_a_400(http):
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_deepinfra_path_serves_the_same_dialect(http):
    r = post(http, {"model": MODEL, "messages": MSG, "max_tokens": 3, "temperature": 0}, "/v1/openai/chat/completions")
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert http.get("/v1/openai/models").json()["data"][0]["id"] == MODEL


def test_content_parts_are_accepted(http):
    body = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert post(http, body).status_code == 200


def test_sse_framing(http):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 6, "stream": True, "temperature": 0}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "length"


def _wait_idle(http, timeout=1.0):
    deadline = time.monotonic() + timeout
    while True:
        text = http.get("/metrics").text
        running, kv = metric(text, "chatforge_running_requests"), metric(text, "chatforge_kv_cache_usage_ratio")
        if (running, kv) == (0, 0) or time.monotonic() > deadline:
            return running, kv
        time.sleep(0.05)


def test_dropped_stream_frees_everything_within_a_second(server, http):
    aborted_before = metric(http.get("/metrics").text, "chatforge_aborted_requests_total")
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert metric(http.get("/metrics").text, "chatforge_running_requests") == 1
    assert _wait_idle(http) == (0, 0)
    assert metric(http.get("/metrics").text, "chatforge_aborted_requests_total") == aborted_before + 1


def test_dropped_non_streaming_request_is_aborted(server, http):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=1.0)
    assert _wait_idle(http) == (0, 0)


def test_metrics_and_health(http):
    post(http, {"model": MODEL, "messages": MSG, "max_tokens": 2})
    text = http.get("/metrics").text
    assert 'chatforge_requests_total{dialect="openai",model="HuggingFaceTB/SmolLM2-135M-Instruct",status="200"}' in text
    for name in ("chatforge_time_to_first_token_seconds_bucket", "chatforge_e2e_request_latency_seconds_count",
                 "chatforge_prompt_tokens_total", "chatforge_generation_tokens_total", "chatforge_preemptions_total",
                 "chatforge_prefix_cache_hit_tokens_total", "chatforge_waiting_requests"):
        assert name in text
    assert http.get("/health").json()["status"] == "ok"


def counted(http, dialect: str, model: str, status: str) -> float:
    """chatforge_requests_total's sample for these labels (0 before the first)."""
    sample = f'chatforge_requests_total{{dialect="{dialect}",model="{model}",status="{status}"}} '
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(sample)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_every_answer_is_counted_with_its_status(http, monkeypatch):
    """Validation 400s (answered before the route runs), a 401, and 500s from a bug before or
    inside the serving template are counted, as admitted requests are."""
    before = {labels: counted(http, *labels) for labels in (
        ("openai", "", "400"), ("infomaniak_openai", "", "400"), ("egp", "", "400"), ("openai", "", "500"),
        ("openai", MODEL, "500"), ("openai", "", "200"))}
    assert post(http, {"model": MODEL, "messages": MSG, "n": 0}).status_code == 400
    assert post(http, {"model": MODEL, "messages": MSG, "n": 0}, "/1/ai/10775/openai/chat/completions").status_code == 400
    assert post(http, {"chat_history": "no"}, "/v4/models/d/chat-completions").status_code == 400
    assert http.get("/v1/models").status_code == 200

    def bug(*args, **kwargs):
        raise RuntimeError("injected")

    from chatforge.api.openai import translate
    from chatforge.service.chat import ChatService

    monkeypatch.setattr(translate, "to_internal", bug)  # in the route, before the serving template
    assert post(http, {"model": MODEL, "messages": MSG, "max_tokens": 1}).status_code == 500
    monkeypatch.undo()
    monkeypatch.setattr(ChatService, "prepare", bug)  # in the serving template, before admission
    assert post(http, {"model": MODEL, "messages": MSG, "max_tokens": 1}).status_code == 500
    monkeypatch.undo()
    after = {labels: counted(http, *labels) for labels in before}
    assert {labels: after[labels] - before[labels] for labels in before} == {
        ("openai", "", "400"): 1, ("infomaniak_openai", "", "400"): 1, ("egp", "", "400"): 1,
        ("openai", "", "500"): 1, ("openai", MODEL, "500"): 1, ("openai", "", "200"): 1}


def test_a_failing_engine_step_is_a_500_and_the_server_goes_on(http, catalog):
    """A bug in a model step ends the requests of that step with 500 internal_error, frees
    their KV blocks, and leaves the server serving (engine/llm_engine.py, LLMEngine.step)."""
    engine = catalog.get(None).engine
    runner = engine.engine.runner
    calls = {"left": 1}
    execute = runner.execute

    def fail_once(batch):
        if calls["left"]:
            calls["left"] -= 1
            raise RuntimeError("injected step failure")
        return execute(batch)

    runner.execute = fail_once
    try:
        r = post(http, {"model": MODEL, "messages": MSG, "max_tokens": 4})
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["type"] == "server_error" and err["code"] == "internal_error"
        assert "injected" not in err["message"] and "Traceback" not in err["message"]
        assert engine.stats().num_blocks_used == 0 and engine.is_running
        assert http.get("/health").json()["status"] == "ok"
        ok = post(http, {"model": MODEL, "messages": MSG, "max_tokens": 4})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    finally:
        del runner.execute


def test_a_step_failing_mid_stream_ends_the_stream_with_an_error_object(http, catalog):
    engine = catalog.get(None).engine
    runner = engine.engine.runner
    calls = {"n": 0}
    execute = runner.execute

    def fail_third_step(batch):
        calls["n"] += 1
        if calls["n"] == 3:  # the prefill and one decode step have streamed text by then
            raise RuntimeError("injected step failure")
        return execute(batch)

    runner.execute = fail_third_step
    try:
        body = {"model": MODEL, "messages": MSG, "max_tokens": 20, "stream": True, "ignore_eos": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        objs = [json.loads(e) for e in events[:-1]]
        assert events[-1] == "[DONE]"
        assert any(o.get("choices") and o["choices"][0]["delta"].get("content") for o in objs[:-1])
        assert objs[-1]["error"]["code"] == "internal_error" and objs[-1]["error"]["type"] == "server_error"
        assert engine.stats().num_blocks_used == 0 and engine.is_running
    finally:
        del runner.execute


@pytest.mark.parametrize("method, path, status, envelope", [
    ("GET", "/v1/chat/completions", 405, "openai"),
    ("POST", "/v1/no-such-thing", 404, "openai"),
    ("GET", "/1/ai/10775/openai/completions", 405, "openai"),
    ("GET", "/tokenize", 405, "openai"),
    ("GET", "/v4/models/d/chat-completions", 405, "egp"),
    ("POST", "/1/llm/profiles", 405, "infomaniak"),
    ("POST", "/1/ai", 405, "infomaniak"),
    ("DELETE", "/v1/models", 405, "openai"),
    # a dialect's prefix alone, or a path under it that no route serves
    ("GET", "/v1", 404, "openai"),
    ("GET", "/v1/", 404, "openai"),
    ("GET", "/v1/nope", 404, "openai"),
    ("GET", "/1", 404, "infomaniak"),
    ("GET", "/1/nothing", 404, "infomaniak"),
    ("POST", "/1/ai/10775/openai/nope", 404, "openai"),
    ("GET", "/v4", 404, "egp"),
    ("GET", "/v4/nope", 404, "egp"),
])
def test_a_path_or_method_no_route_serves_answers_in_the_dialects_envelope(http, method, path, status, envelope):
    r = http.request(method, path, json={})
    assert r.status_code == status
    body = r.json()
    code = {404: "not_found", 405: "method_not_allowed"}[status]
    if envelope == "openai":
        assert body["error"]["code"] == code
        assert body["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
        assert set(body["error"]) == {"message", "type", "param", "code"} and path in body["error"]["message"]
    elif envelope == "egp":
        assert set(body) == {"detail", "code", "param"} and body["code"] == code
    else:
        assert body["result"] == "error" and body["error"]["code"] == code
    if status == 405:
        assert r.headers["allow"]


def test_a_path_or_method_no_route_serves_is_counted_under_its_dialect(http):
    """Under the dialect's label with no model, never by the path asked for: any path may be."""
    asked = [("POST", "/v1/nowhere-3f1c", "openai", "404"), ("GET", "/tokenize", "openai", "405"),
             ("GET", "/1/ai/10775/openai/nowhere-3f1c", "infomaniak_openai", "404"),
             ("GET", "/1/nowhere-3f1c", "infomaniak", "404"), ("POST", "/1/llm/profiles", "infomaniak", "405"),
             ("GET", "/v4/nowhere-3f1c", "egp", "404"), ("GET", "/v4/models/d/chat-completions", "egp", "405")]
    labels = {(dialect, "", status) for _, _, dialect, status in asked}
    before = {label: counted(http, *label) for label in labels}
    for method, path, _, status in asked:
        assert http.request(method, path).status_code == int(status)
    assert http.get("/nowhere-3f1c").status_code == 404  # outside every dialect: not counted
    wanted = {label: sum(1 for _, _, d, s in asked if (d, "", s) == label) for label in labels}
    assert {label: counted(http, *label) - before[label] for label in labels} == wanted
    assert "nowhere" not in http.get("/metrics").text


def test_a_path_outside_every_dialect_keeps_the_plain_404(http):
    r = http.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
