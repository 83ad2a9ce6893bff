"""Infomaniak's legacy `POST /1/llm/{product_id}` against a live chatforge: the documented shape,
streaming, the error envelope, the deprecation headers, and one test per body field showing
its effect. Where a field maps onto an OpenAI parameter, the same request on the OpenAI route
is the oracle: both run the same engine, so equal parameters give equal tokens."""

from __future__ import annotations

import json

import pytest

from chatforge.api.infomaniak.translate import LegacyCodec
from chatforge.api.serving import sse_frames
from chatforge.service.errors import OverloadedError
from chatforge.service.protocol import ChatEvent, ChoiceDelta, Usage

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
URL = "/1/llm/10775"  # the page's own example product id
Q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
STORY = [{"role": "user", "content": "Tell me a short story about a dragon."}]
REPEAT = [{"role": "user", "content": "Repeat the word hello ten times."}]  # greedy: hello, hello, hello, ...
PLAIN = {"repetition_penalty": 1.0}  # the standard preset's penalty off, to compare with OpenAI


def legacy(http, body, url=URL):
    r = http.post(url, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def text_of(resp) -> str:
    return resp["data"]["choices"][0]["message"]["content"]


def openai(http, messages, **params) -> dict:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **params})
    assert r.status_code == 200, r.text
    return r.json()


def openai_text(http, messages, **params) -> str:
    return openai(http, messages, **params)["choices"][0]["message"]["content"]


def test_golden_shape_of_the_page_example(http):
    # The page's example body with a token cap (test_infomaniak_seed_bodies sends it uncapped).
    r = http.post(URL, json={"messages": [{"content": "Write a letter to your future self", "role": "user"}],
                             "max_new_tokens": 8})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"result", "data"} and body["result"] == "success"
    data = body["data"]
    assert set(data) == {"model", "created", "choices", "usage"}
    assert data["model"] == MODEL and isinstance(data["created"], int)
    (choice,) = data["choices"]
    assert set(choice) == {"index", "message", "finish_reason"}
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("eos_token", "length")
    u = data["usage"]
    assert set(u) == {"input_tokens", "output_tokens", "total_tokens"}
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"] and 0 < u["output_tokens"] <= 8


def test_deprecation_and_successor_link_on_every_answer(http):
    ok = http.post(URL, json={"messages": Q, "max_new_tokens": 1})
    bad = http.post(URL, json={"messages": Q, "max_new_tokens": 0})
    for r in (ok, bad):
        assert r.headers["Deprecation"] == "true"
        assert r.headers["Link"] == '</1/ai/10775/openai/chat/completions>; rel="successor-version"'
    assert (ok.status_code, bad.status_code) == (200, 400)
    spec = http.get("/openapi.json").json()
    assert spec["paths"]["/1/llm/{product_id}"]["post"]["deprecated"] is True


def test_temperature_zero_is_greedy(http):
    greedy = openai_text(http, Q, temperature=0, max_tokens=10)
    got = legacy(http, {"messages": Q, "temperature": 0, "max_new_tokens": 10, **PLAIN})
    assert text_of(got) == greedy
    assert "Paris" in greedy


def test_top_k_one_equals_greedy(http):
    greedy = openai_text(http, STORY, temperature=0, max_tokens=10)
    got = legacy(http, {"messages": STORY, "temperature": 1.0, "top_k": 1, "seed": 3, "max_new_tokens": 10, **PLAIN})
    assert text_of(got) == greedy


def test_tiny_top_p_equals_greedy(http):
    greedy = openai_text(http, STORY, temperature=0, max_tokens=10)
    got = legacy(http, {"messages": STORY, "temperature": 1.0, "top_p": 1e-6, "seed": 4, "max_new_tokens": 10, **PLAIN})
    assert text_of(got) == greedy


def test_typical_p_keeping_one_token_makes_seeds_irrelevant(http):
    base = {"messages": STORY, "profile_type": "creative", "max_new_tokens": 12}
    free = {text_of(legacy(http, {**base, "seed": s})) for s in (1, 2, 3)}
    assert len(free) > 1  # without it the seed matters...
    narrow = {text_of(legacy(http, {**base, "seed": s, "typical_p": 1e-6})) for s in (1, 2, 3)}
    assert len(narrow) == 1  # ...with it a single token survives each step


@pytest.mark.parametrize("field, value", [("repetition_penalty", 1.5), ("frequency_penalty", 1.5)])
def test_penalties_act_like_the_openai_ones(http, field, value):
    plain = openai_text(http, REPEAT, temperature=0, max_tokens=10)
    oracle = openai_text(http, REPEAT, temperature=0, max_tokens=10, **{field: value})
    assert plain.lower().count("hello") > oracle.lower().count("hello") >= 1
    got = legacy(http, {"messages": REPEAT, "temperature": 0, "max_new_tokens": 10, **PLAIN, field: value})
    assert text_of(got) == oracle


def test_seed_reproduces_and_matches_openai_sampling(http):
    body = {"messages": STORY, "temperature": 0.9, "top_p": 0.8, "top_k": 40, "seed": 1234, "max_new_tokens": 10, **PLAIN}
    a, b = text_of(legacy(http, body)), text_of(legacy(http, body))
    assert a == b
    assert a == openai_text(http, STORY, temperature=0.9, top_p=0.8, top_k=40, seed=1234, max_tokens=10)


@pytest.mark.parametrize("profile, oracle", [
    ("creative", {"temperature": 1.0, "top_p": 0.95, "top_k": 100, "repetition_penalty": 1.0}),
    ("standard", {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05}),
    ("strict", {"temperature": 0.0}),
])
def test_profile_presets_are_the_published_values(http, profile, oracle):
    published = http.get("/1/llm/profiles").json()
    assert published["result"] == "success"
    values = published["data"][profile]
    assert {k: v for k, v in values.items() if v is not None and k in oracle} == oracle
    got = legacy(http, {"messages": STORY, "profile_type": profile, "seed": 99, "max_new_tokens": 10})
    assert text_of(got) == openai_text(http, STORY, seed=99, max_tokens=10, **oracle)


def test_no_profile_means_standard(http):
    body = {"messages": STORY, "seed": 5, "max_new_tokens": 12}
    assert text_of(legacy(http, body)) == text_of(legacy(http, {**body, "profile_type": "standard"}))


def test_explicit_parameters_override_the_preset(http):
    # strict alone is greedy; an explicit temperature brings sampling back, the rest of the preset stays.
    got = legacy(http, {"messages": STORY, "profile_type": "strict", "temperature": 1.0, "seed": 8, "max_new_tokens": 10})
    assert text_of(got) == openai_text(http, STORY, temperature=1.0, top_p=1.0, seed=8, max_tokens=10)


def test_max_new_tokens_ends_in_length(http):
    data = legacy(http, {"messages": STORY, "max_new_tokens": 3})["data"]
    assert data["usage"]["output_tokens"] == 3 and data["choices"][0]["finish_reason"] == "length"


def test_truncate_keeps_the_last_prompt_tokens(http):
    full = legacy(http, {"messages": Q, "max_new_tokens": 1})["data"]["usage"]["input_tokens"]
    assert full > 16
    cut = legacy(http, {"messages": Q, "max_new_tokens": 1, "truncate": 16})["data"]["usage"]
    assert cut["input_tokens"] == 16


def test_stop_sequence_is_cut_and_reported(http):
    base = text_of(legacy(http, {"messages": Q, "temperature": 0, "max_new_tokens": 16, **PLAIN}))
    assert "Paris" in base
    got = legacy(http, {"messages": Q, "temperature": 0, "max_new_tokens": 16, "stop": ["Paris"], **PLAIN})
    assert text_of(got) == base[: base.index("Paris")]
    assert got["data"]["choices"][0]["finish_reason"] == "stop_sequence"


def test_natural_end_is_eos_token(http):
    got = legacy(http, {"messages": [{"role": "user", "content": "Say OK."}], "temperature": 0, "max_new_tokens": 64})
    assert got["data"]["choices"][0]["finish_reason"] == "eos_token"
    assert "<|im_end|>" not in text_of(got)


def test_system_prompt_is_the_system_turn(http):
    system = "You are a pirate. Always answer like a pirate."
    oracle = openai(http, [{"role": "system", "content": system}, *Q], temperature=0, max_tokens=8)
    got = legacy(http, {"messages": Q, "system_prompt": system, "temperature": 0, "max_new_tokens": 8, **PLAIN})
    assert text_of(got) == oracle["choices"][0]["message"]["content"]
    assert got["data"]["usage"]["input_tokens"] == oracle["usage"]["prompt_tokens"]
    without = legacy(http, {"messages": Q, "max_new_tokens": 1})["data"]["usage"]["input_tokens"]
    assert without != oracle["usage"]["prompt_tokens"]


def test_a_conversation_with_earlier_turns(http):
    turns = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"},
             {"role": "user", "content": "What is my name?"}]
    got = legacy(http, {"messages": turns, "temperature": 0, "max_new_tokens": 12, **PLAIN})
    assert text_of(got) == openai_text(http, turns, temperature=0, max_tokens=12)


def test_model_field_names_the_model(http):
    assert legacy(http, {"messages": Q, "model": "smollm2", "max_new_tokens": 1})["data"]["model"] == "smollm2"
    r = http.post(URL, json={"messages": Q, "model": "mixtral"})
    assert r.status_code == 404
    assert r.json() == {"result": "error", "error": {"code": "model_not_found", "description": "The model `mixtral` does not exist."}}


def test_stream_sends_data_objects_with_deltas(http):
    body = {"messages": Q, "temperature": 0, "max_new_tokens": 10, **PLAIN}
    whole = legacy(http, body)
    with http.stream("POST", URL, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["Deprecation"] == "true"
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    objs = [json.loads(e[6:]) for e in events[:-1]]
    for o in objs:
        assert set(o) == {"model", "created", "choices", "usage"} and o["model"] == MODEL
        (c,) = o["choices"]
        assert set(c) == {"index", "delta", "finish_reason"} and c["index"] == 0
    assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in o["choices"][0]["delta"] for o in objs[1:])
    assert "".join(o["choices"][0]["delta"].get("content", "") for o in objs) == text_of(whole)
    last = objs[-1]
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": whole["data"]["choices"][0]["finish_reason"]}
    assert last["usage"] == whole["data"]["usage"]
    assert all(o["usage"] is None and o["choices"][0]["finish_reason"] is None for o in objs[:-1])


BAD = [
    ({"messages": Q, "max_new_tokens": 5001}, "max_new_tokens"),
    ({"messages": Q, "max_new_tokens": 0}, "max_new_tokens"),
    ({"messages": Q, "temperature": 2.5}, "temperature"),
    ({"messages": Q, "top_k": 101}, "top_k"),
    ({"messages": Q, "top_k": 0}, "top_k"),
    ({"messages": Q, "top_p": 0}, "top_p"),
    ({"messages": Q, "typical_p": 1.5}, "typical_p"),
    ({"messages": Q, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": Q, "frequency_penalty": -2.5}, "frequency_penalty"),
    ({"messages": Q, "truncate": 30001}, "truncate"),
    ({"messages": Q, "truncate": 0}, "truncate"),
    ({"messages": Q, "seed": -1}, "seed"),
    ({"messages": Q, "seed": 2**63}, "seed"),
    ({"messages": Q, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": Q, "stop": [""]}, "stop"),
    ({"messages": Q, "stream": 0}, "stream"),
    ({"messages": Q, "profile_type": "wild"}, "profile_type"),
    ({"messages": Q, "n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}, *Q]}, "messages[0].role"),
    ({"messages": [*Q, *Q]}, "messages[1].role"),
    ({"messages": [{"role": "assistant", "content": "Hi"}, *Q]}, "messages[0].role"),
    ({"messages": [*Q, {"role": "assistant", "content": "Paris."}]}, "last message"),
]


@pytest.mark.parametrize("body, field", BAD)
def test_bad_input_is_a_validation_error_in_the_envelope(http, body, field):
    r = http.post(URL, json=body)
    assert r.status_code == 400, r.text
    out = r.json()
    assert set(out) == {"result", "error"} and out["result"] == "error"
    assert set(out["error"]) == {"code", "description"} and out["error"]["code"] == "validation_error"
    assert field in out["error"]["description"]


def test_a_missing_field_keeps_the_legacy_code(http):
    """OpenAI's missing_required_parameter is not among this envelope's codes; the words say it."""
    r = http.post(URL, json={"model": "mixtral"})
    assert r.status_code == 400
    assert r.json()["error"] == {"code": "validation_error", "description": "Missing required parameter: 'messages'."}


def test_invalid_json_is_a_validation_error(http):
    r = http.post(URL, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_error"


def test_a_product_id_must_be_a_number(http):
    r = http.post("/1/llm/not-a-number", json={"messages": Q})
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_error"
    assert "product_id" in r.json()["error"]["description"]
    # /1/llm/profiles is the presets' read-only path, not a product
    assert http.post("/1/llm/profiles", json={"messages": Q}).status_code == 405
    r = http.post("/1/llm/%C3%A9t%C3%A9", json={"messages": Q})  # the successor link quotes what it got
    assert r.status_code == 400 and r.headers["Link"] == '</1/ai/%C3%A9t%C3%A9/openai/chat/completions>; rel="successor-version"'


def test_over_long_prompt_is_context_length_exceeded(http, catalog):
    context = catalog.get(None).context_length
    r = http.post(URL, json={"messages": [{"role": "user", "content": "hello " * context}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and str(context) in err["description"]


def test_truncate_rescues_an_over_long_prompt(http, catalog):
    long = [{"role": "user", "content": "hello " * catalog.get(None).context_length}]
    got = legacy(http, {"messages": long, "truncate": 64, "max_new_tokens": 2})
    assert got["data"]["usage"]["input_tokens"] == 64


def test_profiles_endpoint_publishes_all_three(http):
    r = http.get("/1/llm/profiles")
    assert r.status_code == 200
    assert r.json() == {"result": "success", "data": {
        "creative": {"temperature": 1.0, "top_p": 0.95, "top_k": 100, "repetition_penalty": 1.0},
        "standard": {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05},
        "strict": {"temperature": 0.0, "top_p": 1.0, "top_k": None, "repetition_penalty": 1.0},
    }}


def test_metrics_count_the_dialect(http):
    legacy(http, {"messages": Q, "max_new_tokens": 1})
    assert f'chatforge_requests_total{{dialect="infomaniak",model="{MODEL}",status="200"}}' in http.get("/metrics").text


async def test_an_error_mid_stream_is_an_error_event():
    async def events():  # one text delta, then the engine fails
        yield ChatEvent([ChoiceDelta(0, "Hel")], Usage(prompt_tokens=5, completion_tokens=1, estimated_cost=0.0))
        raise OverloadedError()

    raw = b"".join([f async for f in sse_frames(events(), LegacyCodec("m", 7))])
    assert raw == (
        b'data: {"model":"m","created":7,"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},'
        b'"finish_reason":null}],"usage":null}\n\n'
        b'event: error\ndata: {"result":"error","error":{"code":"service_unavailable",'
        b'"description":"the server is overloaded; retry shortly"}}\n\n'
    )
