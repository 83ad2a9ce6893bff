"""Scale EGP v4 `POST /v4/models/{model_deployment_id}/chat-completions` on the wire, against a
live chatforge: the documented shape, streaming, errors, and one test per body field showing its
effect. Where a field maps onto an OpenAI parameter, the same request on the OpenAI route is the
oracle: both run the same engine, so equal parameters give equal tokens."""

from __future__ import annotations

import json

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.platform.scopes import DeploymentScope
from chatforge.settings import load_settings

from .conftest import LiveServer

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
URL = "/v4/models/my-deployment/chat-completions"
PROMPT = "What is the capital of France? Answer in one sentence."
STORY = "Tell me a short story about a dragon."
REPEAT = "Repeat the word hello ten times."  # greedy: hello, hello, hello, ...


def egp(http, body, url=URL, status=200):
    r = http.post(url, json=body, headers={"x-api-key": "unused"})
    assert r.status_code == status, r.text
    return r.json()


def text_of(resp) -> str:
    (prompt, completions), = resp["completions"]
    (text,) = completions
    return text


def openai(http, messages, **params) -> dict:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **params})
    assert r.status_code == 200, r.text
    return r.json()


def openai_text(http, prompt, history=(), **params) -> str:
    return openai(http, [*history, {"role": "user", "content": prompt}], **params)["choices"][0]["message"]["content"]


def test_golden_shape(http):
    resp = egp(http, {"chat_history": [], "prompt": PROMPT, "max_tokens": 8, "temperature": 0})
    assert set(resp) == {"completions", "choices", "finish_reason", "prompt_tokens", "response_tokens"}
    assert resp["completions"][0][0] == PROMPT  # the caller's prompt field, not the rendered template
    assert isinstance(text_of(resp), str) and text_of(resp)
    assert resp["choices"] == [{"index": 0, "logprobs": None}]
    assert resp["finish_reason"] in ("stop", "length")
    oracle = openai(http, [{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0)
    assert text_of(resp) == oracle["choices"][0]["message"]["content"]
    assert resp["prompt_tokens"] == oracle["usage"]["prompt_tokens"]
    assert resp["response_tokens"] == oracle["usage"]["completion_tokens"]


def test_sdk_example_body_as_documented(http):
    # The example body from the SDK's own docstring, with a token cap so the test stays short.
    body = {
        "prompt": "Generate 5 more",
        "chat_history": [
            {"role": "system", "content": "You are a name generator. Do not generate anything else than names"},
            {"role": "user", "content": "Generate 5 names"},
            {"role": "assistant", "content": "1. Olivia Bennett\n2. Ethan Carter\n3. Sophia Ramirez\n4. Liam Thompson\n5. Ava Mitchell"},
        ],
        "max_tokens": 12,
    }
    resp = egp(http, body)
    assert resp["completions"][0][0] == "Generate 5 more" and text_of(resp)
    assert resp["finish_reason"] in ("stop", "length") and 0 < resp["response_tokens"] <= 12


def test_chat_history_then_prompt_is_the_conversation(http):
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Hello Ada!"}]
    resp = egp(http, {"chat_history": history, "prompt": "What is my name?", "temperature": 0, "max_tokens": 12})
    assert text_of(resp) == openai_text(http, "What is my name?", history, temperature=0, max_tokens=12)


def test_text_parts_and_missing_role_mean_the_user(http):
    parts = [{"content": [{"type": "text", "text": "My name is Ada."}]}, {"role": "assistant", "content": "Hello Ada!"}]
    plain = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"}]
    a = egp(http, {"chat_history": parts, "prompt": "What is my name?", "temperature": 0, "max_tokens": 8})
    b = egp(http, {"chat_history": plain, "prompt": "What is my name?", "temperature": 0, "max_tokens": 8})
    assert text_of(a) == text_of(b) and a["prompt_tokens"] == b["prompt_tokens"]


def test_default_temperature_is_0_2(http):
    resp = egp(http, {"chat_history": [], "prompt": STORY, "max_tokens": 10,
                      "model_request_parameters": {"bindings": {"seed": 11}}})
    assert text_of(resp) == openai_text(http, STORY, temperature=0.2, seed=11, max_tokens=10)


def test_temperature_zero_is_greedy(http):
    resp = egp(http, {"chat_history": [], "prompt": STORY, "temperature": 0, "max_tokens": 10})
    assert text_of(resp) == openai_text(http, STORY, temperature=0, max_tokens=10)


def test_temperature_above_the_maximum_is_clamped(http):
    hot = {"chat_history": [], "prompt": STORY, "max_tokens": 10, "model_request_parameters": {"bindings": {"seed": 5}}}
    clamped = text_of(egp(http, {**hot, "temperature": 7.5}))
    assert clamped == text_of(egp(http, {**hot, "temperature": 2.0}))
    assert clamped == openai_text(http, STORY, temperature=2.0, seed=5, max_tokens=10)


def test_top_k_one_and_tiny_top_p_equal_greedy(http):
    greedy = openai_text(http, STORY, temperature=0, max_tokens=10)
    seeded = {"model_request_parameters": {"bindings": {"seed": 3}}}
    assert text_of(egp(http, {"chat_history": [], "prompt": STORY, "temperature": 1, "top_k": 1, "max_tokens": 10, **seeded})) == greedy
    assert text_of(egp(http, {"chat_history": [], "prompt": STORY, "temperature": 1, "top_p": 1e-6, "max_tokens": 10, **seeded})) == greedy


def test_sampling_fields_match_openai(http):
    fields = {"temperature": 0.9, "top_p": 0.8, "top_k": 40, "frequency_penalty": 0.5, "presence_penalty": 0.3}
    resp = egp(http, {"chat_history": [], "prompt": STORY, "max_tokens": 10, **fields,
                      "model_request_parameters": {"bindings": {"seed": 21}}})
    assert text_of(resp) == openai_text(http, STORY, seed=21, max_tokens=10, **fields)


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
def test_each_penalty_curbs_repetition(http, field):
    plain = openai_text(http, REPEAT, temperature=0, max_tokens=10)
    resp = egp(http, {"chat_history": [], "prompt": REPEAT, "temperature": 0, "max_tokens": 10, field: 1.5})
    assert text_of(resp) == openai_text(http, REPEAT, temperature=0, max_tokens=10, **{field: 1.5})
    assert plain.lower().count("hello") > text_of(resp).lower().count("hello") >= 1


def test_stop_sequences_never_in_the_text(http):
    base = text_of(egp(http, {"chat_history": [], "prompt": PROMPT, "temperature": 0, "max_tokens": 16}))
    assert "Paris" in base
    resp = egp(http, {"chat_history": [], "prompt": PROMPT, "temperature": 0, "max_tokens": 16, "stop_sequences": ["Paris", "zzz"]})
    assert text_of(resp) == base[: base.index("Paris")]
    assert resp["finish_reason"] == "stop"


def test_max_tokens_ends_in_length(http):
    resp = egp(http, {"chat_history": [], "prompt": STORY, "max_tokens": 3})
    assert resp["response_tokens"] == 3 and resp["finish_reason"] == "length"


def test_max_tokens_past_the_context_is_an_error(http, catalog):
    context = catalog.get(None).context_length
    out = egp(http, {"chat_history": [], "prompt": PROMPT, "max_tokens": context}, status=400)
    assert out["code"] == "context_length_exceeded" and out["param"] == "chat_history" and str(context) in out["detail"]


def test_logprobs_and_top_logprobs(http):
    resp = egp(http, {"chat_history": [], "prompt": PROMPT, "temperature": 0, "max_tokens": 6,
                      "logprobs": True, "top_logprobs": 3})
    (choice,) = resp["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == resp["response_tokens"] == 6
    for tok in content:
        assert set(tok) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(tok["top_logprobs"]) == 3 and tok["logprob"] <= 0
        assert tok["token"] == tok["top_logprobs"][0]["token"]  # greedy picks the most likely
        assert bytes(tok["bytes"]).decode("utf-8", "replace") == tok["token"]
    oracle = openai(http, [{"role": "user", "content": PROMPT}], temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    assert content == oracle["choices"][0]["logprobs"]["content"]


def test_bindings_set_sampling_fields(http):
    by_binding = egp(http, {"chat_history": [], "prompt": STORY,
                            "model_request_parameters": {"bindings": {"temperature": 0.0, "max_tokens": 5.0}}})
    assert by_binding["response_tokens"] == 5
    assert text_of(by_binding) == openai_text(http, STORY, temperature=0, max_tokens=5)


def test_oldest_turns_are_dropped_when_the_history_does_not_fit(http, catalog):
    model = catalog.get(None)
    filler = "The quick brown fox jumps over the lazy dog. " * 12  # ~120 tokens a turn
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": filler},
               {"role": "assistant", "content": filler}, {"role": "user", "content": "Noted."},
               {"role": "assistant", "content": "Good."}]
    prompt = "What is 2 + 2?"

    def tokens(messages):
        return len(model.tokenizer.encode(model.template.render(messages, add_generation_prompt=True)))

    kept = [history[0], *history[3:], {"role": "user", "content": prompt}]  # the two long turns gone
    full = [*history, {"role": "user", "content": prompt}]
    max_tokens = model.context_length - tokens(kept)  # room for the kept turns only
    assert tokens(full) > tokens(kept) + 200
    resp = egp(http, {"chat_history": history, "prompt": prompt, "temperature": 0, "max_tokens": max_tokens,
                      "stop_sequences": ["\n", "."]})
    assert resp["prompt_tokens"] == tokens(kept)
    assert resp["completions"][0][0] == prompt


def test_request_chat_template_and_kwargs(http, catalog):
    model = catalog.get(None)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{{ greeting }}assistant:"
    resp = egp(http, {"chat_history": [], "prompt": "Hello", "temperature": 0, "max_tokens": 4,
                      "chat_template": template, "chat_template_kwargs": {"greeting": "Be brief. "}})
    assert resp["prompt_tokens"] == len(model.tokenizer.encode("user: Hello\nBe brief. assistant:"))


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{{ raise_exception('no thanks') }}",
    "{% for m in messages %}",
])
def test_a_template_that_escapes_or_fails_is_a_400(http, template):
    out = egp(http, {"chat_history": [], "prompt": "Hello", "chat_template": template, "max_tokens": 2}, status=400)
    assert out["code"] == "invalid_request_error"
    # compile errors and refusals while rendering alike: the request's own template is named
    assert out["param"] == "chat_template"
    assert "Hello" not in out["detail"]


def test_stream_is_whole_response_objects_without_done(http):
    body = {"chat_history": [], "prompt": PROMPT, "temperature": 0, "max_tokens": 10, "logprobs": True}
    whole = egp(http, body)
    with http.stream("POST", URL, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: {") for e in events)  # no event: lines, no [DONE]
    objs = [json.loads(e[6:]) for e in events]
    for o in objs[:-1]:
        assert set(o) == {"completions", "choices", "finish_reason"} and o["finish_reason"] is None
        assert o["completions"][0][0] == PROMPT
    assert "".join(text_of(o) for o in objs) == text_of(whole)
    streamed_lps = [t for o in objs for t in o["choices"][0]["logprobs"]["content"]]
    assert streamed_lps == whole["choices"][0]["logprobs"]["content"]
    last = objs[-1]
    assert text_of(last) == ""
    assert (last["finish_reason"], last["prompt_tokens"], last["response_tokens"]) == (
        whole["finish_reason"], whole["prompt_tokens"], whole["response_tokens"])


BAD = [
    ({"prompt": PROMPT}, "chat_history"),
    ({"chat_history": []}, "prompt"),
    ({"chat_history": [], "prompt": PROMPT, "temperature": -0.1}, "temperature"),
    ({"chat_history": [], "prompt": PROMPT, "top_p": 0}, "top_p"),
    ({"chat_history": [], "prompt": PROMPT, "top_k": 2.5}, "top_k"),
    ({"chat_history": [], "prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ({"chat_history": [], "prompt": PROMPT, "stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"chat_history": [], "prompt": PROMPT, "stop_sequences": [""]}, "stop_sequences[0]"),
    ({"chat_history": [], "prompt": PROMPT, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"chat_history": [], "prompt": PROMPT, "frequency_penalty": 3}, "frequency_penalty"),
    ({"chat_history": [], "prompt": PROMPT, "stream": "yes"}, "stream"),
    ({"chat_history": [], "prompt": PROMPT, "reasoning_effort": "high"}, "reasoning_effort"),
    ({"chat_history": [], "prompt": PROMPT, "frobnicate": 1}, "frobnicate"),
    ({"chat_history": [{"role": "tool", "content": "x"}], "prompt": PROMPT}, "chat_history[0].role"),
    ({"chat_history": [{"content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}], "prompt": PROMPT},
     "chat_history[0].content"),  # text only: image parts are not part of the schema
    ({"chat_history": [], "prompt": PROMPT, "model_request_parameters": {"bindings": {"model": "gpt-4"}}},
     "model_request_parameters.bindings.model"),
    ({"chat_history": [], "prompt": PROMPT, "model_request_parameters": {"bindings": {"temperature": True}}},
     "model_request_parameters.bindings.temperature"),
    ({"chat_history": [], "prompt": PROMPT, "model_request_parameters": {"bindings": {"top_p": 1.5}}},
     "model_request_parameters.bindings.top_p"),
    ({"chat_history": [], "prompt": PROMPT, "model_request_parameters": {"bindings": {"seed": "5"}}},
     "model_request_parameters.bindings.seed"),
    ({"chat_history": [], "prompt": PROMPT, "model_request_parameters": {"bindings": {"top_k": 2.5}}},
     "model_request_parameters.bindings.top_k"),
    ({"chat_history": [], "prompt": PROMPT, "seed": 5}, "seed"),  # a binding, not a top-level field
    ({"chat_history": [{"role": "user", "content": 5}], "prompt": PROMPT}, "chat_history[0].content"),
    ({"chat_history": [], "prompt": PROMPT, "chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
]


@pytest.mark.parametrize("body, param", BAD)
def test_bad_input_is_a_400_naming_the_field(http, body, param):
    out = egp(http, body, status=400)
    assert set(out) == {"detail", "code", "param"}
    assert out["code"] == "invalid_request_error" and out["param"].startswith(param) and out["detail"]
    assert ".str" not in out["param"] and "list[" not in out["param"]  # no union member pydantic tried


def test_a_missing_field_keeps_egps_code(http):
    """OpenAI's missing_required_parameter is the OpenAI dialect's; EGP's codes name it invalid_request_error."""
    out = egp(http, {"chat_history": [{"content": "hi"}]}, status=400)
    assert out == {"detail": "Missing required parameter: 'prompt'.", "code": "invalid_request_error", "param": "prompt"}


def test_a_bad_query_parameter_is_named_alone(http):
    """Not `query.limit`: where it was sent is no part of its name."""
    r = http.get("/v4/model-deployments", params={"limit": 0}, headers={"x-api-key": "unused"})
    assert r.status_code == 400, r.text
    assert r.json()["param"] == "limit" and r.json()["detail"].startswith("limit: ")


def test_a_binding_overrides_the_top_level_field(http):
    resp = egp(http, {"chat_history": [], "prompt": STORY, "max_tokens": 30, "temperature": 1.5,
                      "model_request_parameters": {"bindings": {"temperature": 0, "max_tokens": 6}}})
    assert resp["response_tokens"] == 6
    assert text_of(resp) == openai_text(http, STORY, temperature=0, max_tokens=6)


def test_top_logprobs_alone_implies_logprobs(http):
    resp = egp(http, {"chat_history": [], "prompt": PROMPT, "temperature": 0, "max_tokens": 2, "top_logprobs": 2})
    content = resp["choices"][0]["logprobs"]["content"]
    assert len(content) == 2 and all(len(t["top_logprobs"]) == 2 for t in content)


def test_any_deployment_id_runs_the_default_model_in_open_mode(http):
    for dep in ("a", "deployment-7f3c", "10775"):
        resp = egp(http, {"chat_history": [], "prompt": PROMPT, "max_tokens": 1}, url=f"/v4/models/{dep}/chat-completions")
        assert resp["response_tokens"] == 1


def test_metrics_count_the_dialect(http):
    egp(http, {"chat_history": [], "prompt": PROMPT, "max_tokens": 1})
    assert f'chatforge_requests_total{{dialect="egp",model="{MODEL}",status="200"}}' in http.get("/metrics").text


# -- deployments (open mode's config table; the database's are in test_platform_routes.py) ------------
def test_deployment_resolution():
    s = load_settings(deployments={"dep-a": {"model": "smollm2"}, "bare": {}})
    def configured(deployment_id):
        return DeploymentScope.configured(deployment_id, s.deployments.get(deployment_id))

    assert configured("dep-a") == DeploymentScope("dep-a", "smollm2")
    assert configured("bare") == DeploymentScope("bare", None)  # the server's default model
    assert configured("anything") == DeploymentScope("anything", None)


@pytest.fixture(scope="module")
def configured(api_settings, catalog):
    """A server in open mode with configured deployments."""
    deployments = load_settings(deployments={"dep-a": {"model": "smollm2"}, "gone": {"model": "llama-70b"}}).deployments
    settings = api_settings.model_copy(update={"deployments": deployments})
    with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        yield http


def test_configured_deployments(configured):
    body = {"chat_history": [], "prompt": PROMPT, "max_tokens": 1}
    assert egp(configured, body, url="/v4/models/dep-a/chat-completions")["response_tokens"] == 1
    assert egp(configured, body, url="/v4/models/nope/chat-completions")["response_tokens"] == 1
    out = egp(configured, body, url="/v4/models/gone/chat-completions", status=404)
    assert out["code"] == "model_not_found"
