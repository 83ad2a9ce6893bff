"""`POST /v1/completions` (and DeepInfra's and Infomaniak's successor paths) against the live
server: the official openai client's `completions.create`, plain, streamed, and scoring a prompt
(`echo` + `logprobs` + `max_tokens: 0`) the way lm-evaluation-harness's local-completions does
it; batches of prompts; token-id prompts; and each refusal in OpenAI's envelope. Every object
these routes send is also checked against OpenAI's schema (openai_conformance.py)."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(catalog):
    return catalog.models[0].tokenizer


def test_plain_completion(client):
    r = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "smollm2"
    (choice,) = r.choices
    assert "Paris" in choice.text and choice.finish_reason == "length" and choice.logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 6)
    assert r.usage.total_tokens == 11 and r.usage.estimated_cost > 0


def test_the_default_max_tokens_is_16(client):
    r = client.completions.create(model="smollm2", prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_a_stream_carries_the_same_text_and_the_usage_last(client):
    whole = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    *texts, usage = chunks
    assert "".join(c.choices[0].text for c in texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in texts] == [None] * (len(texts) - 1) + ["length"]
    assert usage.choices == [] and usage.usage.completion_tokens == 8
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "text_completion" for c in chunks)


def score(client, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """lm-evaluation-harness's loglikelihood: the continuation's summed logprob given the context,
    and whether every continuation token was the greedy choice (token-id prompts, echo, 0 tokens)."""
    ctx, cont = tokenizer.encode(context), tokenizer.encode(continuation)
    r = client.completions.create(model="smollm2", prompt=[ctx + cont], echo=True, logprobs=1, max_tokens=0, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == context + continuation and r.usage.completion_tokens == 0
    assert lp.tokens[len(ctx):] == [tokenizer.token_bytes(t).decode() for t in cont]
    greedy = all(max(top, key=top.get) == tok for tok, top in zip(lp.tokens[len(ctx):], lp.top_logprobs[len(ctx):]))
    return sum(lp.token_logprobs[len(ctx):]), greedy


@pytest.mark.parametrize("context, right, wrong", [
    ("The capital of France is", " Paris", " Rome"),
    ("One, two, three, four,", " five", " eleven"),
    ("The sun rises in the", " east", " west"),
])
def test_scores_rank_the_right_continuation_first(client, tokenizer, context, right, wrong):
    right_lp, right_greedy = score(client, tokenizer, context, right)
    wrong_lp, wrong_greedy = score(client, tokenizer, context, wrong)
    assert right_lp > wrong_lp
    assert not wrong_greedy


def test_echo_with_logprobs_lists_every_prompt_token(client, tokenizer, http):
    r = client.completions.create(model="smollm2", prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
    (choice,) = r.choices
    lp = choice.logprobs
    ids = tokenizer.encode(PROMPT)
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert lp.tokens == [tokenizer.token_bytes(t).decode() for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    assert all(x < 0 for x in lp.token_logprobs[1:])
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert top[token] == logprob and 1 <= len(top) <= 3  # the 2 likeliest, and the prompt's own token
        assert max(top.values()) >= logprob
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]
    # the same prompt as token ids scores the same
    by_ids = http.post("/v1/completions", json={"model": "smollm2", "prompt": ids, "echo": True, "logprobs": 2,
                                                "max_tokens": 0}).json()
    assert by_ids["choices"][0]["logprobs"]["token_logprobs"] == lp.token_logprobs


def test_echo_then_generate_streams_the_prompt_first(http, tokenizer):
    body = {"model": "smollm2", "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0,
            "stream": True}
    r = http.post("/v1/completions", json=body)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    first = chunks[0]["choices"][0]
    assert first["text"].startswith(PROMPT) and first["logprobs"]["token_logprobs"][0] is None
    whole = http.post("/v1/completions", json={**body, "stream": False}).json()["choices"][0]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    streamed = {k: sum((c["choices"][0]["logprobs"][k] for c in chunks), []) for k in ("tokens", "text_offset")}
    assert streamed == {k: whole["logprobs"][k] for k in ("tokens", "text_offset")}
    assert len(whole["logprobs"]["tokens"]) == len(tokenizer.encode(PROMPT)) + 3
    assert whole["logprobs"]["text_offset"][-3] == len(PROMPT)  # the completion starts where the prompt ends


def test_a_batch_of_prompts_indexes_choices_per_prompt_and_n(client):
    prompts = ["The capital of France is", "The capital of Italy is"]
    r = client.completions.create(model="smollm2", prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = [c.text for c in r.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]  # greedy: n copies per prompt
    alone = client.completions.create(model="smollm2", prompt=prompts[1], max_tokens=4, temperature=0)
    assert texts[2] == alone.choices[0].text
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 16


def test_sampling_fields_of_the_chat_route_apply(client):
    kw = dict(model="smollm2", prompt="List three colors:", max_tokens=12, temperature=0.9, seed=7, top_p=0.9,
              extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text  # the same seed, the same text
    stopped = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12, temperature=0, stop=["."])
    assert "." not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_the_other_paths(http):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    for path in ("/v1/openai/completions", "/1/ai/10775/openai/completions"):
        r = http.post(path, json=body)
        assert r.status_code == 200 and r.json()["object"] == "text_completion", path
    capped = http.post("/1/ai/10775/openai/completions", json={**body, "max_tokens": 5001})
    assert capped.status_code == 400 and capped.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize("body, param, status", [
    ({"prompt": PROMPT, "suffix": "and then"}, "suffix", 400),
    ({"prompt": PROMPT, "best_of": 3}, "best_of", 400),
    ({"prompt": PROMPT, "logprobs": 6}, "logprobs", 400),
    ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens", 400),
    ({"prompt": PROMPT, "max_tokens": 10**9}, "prompt", 400),
    ({"prompt": []}, "prompt", 400),
    ({"prompt": [[10**7]]}, "prompt", 400),
    ({"prompt": ""}, "prompt", 400),
    ({"prompt": 5}, "prompt", 400),
    ({"prompt": PROMPT, "temperature": "hot"}, "temperature", 400),
    ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
    ({"prompt": PROMPT, "frobnicate": 1}, "frobnicate", 400),
    ({}, "prompt", 400),
    ({"prompt": PROMPT, "model": "gpt-5"}, "model", 404),
])
def test_bad_requests_get_openais_envelope(http, body, param, status):
    r = http.post("/v1/completions", json={"model": "smollm2", **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]


def test_a_prompt_of_the_wrong_shape_is_named_as_such(http):
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": ["a", [1]]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "prompt: must be a string, a list of strings, a list of token ids, or a list of such lists")


def test_a_base_model_needs_no_chat_template(catalog, http):
    """No chat template is rendered on this route: the prompt is tokenized as it is."""
    tokenizer = catalog.models[0].tokenizer
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "<|im_start|>", "echo": True, "logprobs": 0,
                                           "max_tokens": 0}).json()
    assert r["choices"][0]["logprobs"]["tokens"] == ["<|im_start|>"] and tokenizer.encode("<|im_start|>") == [1]
    assert r["usage"]["prompt_tokens"] == 1
