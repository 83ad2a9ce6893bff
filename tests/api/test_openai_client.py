"""The official `openai` client, sync and async, against a live chatforge."""

from __future__ import annotations

import asyncio

import openai
import pytest

from .conftest import PRICE_IN, PRICE_OUT

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
Q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server):
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_plain_completion_with_usage_and_cost(client):
    r = client.chat.completions.create(model=MODEL, messages=Q, temperature=0, max_tokens=24)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert "<|im_end|>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 10 and 0 < u.completion_tokens <= 24
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    expected = (u.prompt_tokens * PRICE_IN + u.completion_tokens * PRICE_OUT) / 1e6
    assert u.model_extra["estimated_cost"] == pytest.approx(expected, rel=1e-9)


def test_alias_is_served_under_its_own_name(client):
    r = client.chat.completions.create(model="smollm2", messages=Q, temperature=0, max_tokens=4)
    assert r.model == "smollm2"


def test_stream_matches_non_stream_and_reports_usage(client):
    kw = dict(model=MODEL, messages=Q, temperature=0, max_tokens=32)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content_chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=Q, max_tokens=5, temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_two_gives_two_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=Q, n=2, max_tokens=12, seed=7, temperature=1.0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert 2 <= r.usage.completion_tokens <= 24  # both choices' tokens, each at most 12


def test_logprobs_with_top_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=Q, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    # The end-of-turn token that stopped the answer is counted in usage but has no text, so no entry.
    ended_on_eos = r.choices[0].finish_reason == "stop"
    assert len(content) == r.usage.completion_tokens - ended_on_eos
    for tok in content:
        assert tok.logprob <= 0
        assert len(tok.top_logprobs) == 3
        lps = [t.logprob for t in tok.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # greedy: the sampled token is the most likely one
        assert tok.token == tok.top_logprobs[0].token and tok.logprob == pytest.approx(lps[0])
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content[:5])


def test_stop_sequence_is_cut(client):
    base = client.chat.completions.create(model=MODEL, messages=Q, temperature=0, max_tokens=24).choices[0].message.content
    assert "Paris" in base
    r = client.chat.completions.create(model=MODEL, messages=Q, temperature=0, max_tokens=24, stop=["Paris"])
    assert r.choices[0].message.content == base[: base.index("Paris")]
    assert r.choices[0].finish_reason == "stop"


def test_seed_reproducibility(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], temperature=1.0, max_tokens=24)
    a = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    assert a == b
    others = {client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1


def test_max_tokens_ends_in_length(client):
    r = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=Q)
    assert e.value.code == "model_not_found"


def test_over_long_prompt_is_context_length_exceeded(client):
    long = [{"role": "user", "content": "hello " * 9000}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=long)
    assert e.value.code == "context_length_exceeded"
    assert "8192" in e.value.message


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, "smollm2"]  # the id, then its alias, each a name requests may use
    assert [m.model_extra["root"] for m in models] == [MODEL, MODEL]
    assert models[0].model_extra["context_length"] == 8192


async def test_async_client_plain_and_stream(aclient):
    kw = dict(model=MODEL, messages=Q, temperature=0, max_tokens=16)
    whole = await aclient.chat.completions.create(**kw)
    stream = await aclient.chat.completions.create(**kw, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content


async def test_sixteen_concurrent_streams_are_well_formed(aclient):
    async def one(i: int):
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=16, temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        content = [c for c in chunks if c.choices]
        assert content[0].choices[0].delta.role == "assistant"
        assert sum(1 for c in content if c.choices[0].finish_reason) == 1
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        return "".join(c.choices[0].delta.content or "" for c in content)

    texts = await asyncio.gather(*(one(i) for i in range(16)))
    assert all(texts)
