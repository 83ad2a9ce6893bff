"""Scale's own Python SDK (PyPI `scale-gp`) pointed at chatforge: a completion, a stream, an
error, and an `event: error` in the middle of a stream."""

from __future__ import annotations

import httpx
import pytest
import scale_gp
from scale_gp import SGPClient

from chatforge.api.egp import translate
from chatforge.api.serving import sse_frames
from chatforge.service.errors import OverloadedError
from chatforge.service.protocol import ChatEvent, ChoiceDelta, FinishReason, Usage

PROMPT = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def client(server):
    with SGPClient(api_key="unused", account_id="acct-1", base_url=server.url, max_retries=0) as c:
        yield c


def test_sdk_completion(client):
    r = client.models.chat_completions.create("my-deployment", chat_history=[], prompt=PROMPT, temperature=0, max_tokens=10)
    assert isinstance(r, scale_gp.types.shared.CompletionResponse)
    ((prompt, (text,)),) = r.completions
    assert prompt == PROMPT and "Paris" in text
    assert r.finish_reason in ("stop", "length") and 0 < r.response_tokens <= 10 and r.prompt_tokens > 10
    assert r.choices[0].index == 0 and r.choices[0].logprobs is None


def test_sdk_stream_adds_up_to_the_completion(client):
    kw = dict(chat_history=[{"role": "system", "content": "You are terse."}], prompt=PROMPT, temperature=0, max_tokens=10)
    whole = client.models.chat_completions.create("my-deployment", **kw)
    chunks = list(client.models.chat_completions.create("my-deployment", **kw, stream=True))
    assert len(chunks) > 2
    assert "".join(c.completions[0][1][0] for c in chunks) == whole.completions[0][1][0]
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.response_tokens) == (
        whole.finish_reason, whole.prompt_tokens, whole.response_tokens)


def test_sdk_logprobs_and_bindings(client):
    r = client.models.chat_completions.create(
        "my-deployment", chat_history=[], prompt=PROMPT, max_tokens=4, logprobs=True, top_logprobs=2,
        model_request_parameters={"bindings": {"temperature": 0.0}},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.response_tokens == 4
    assert all(len(t.top_logprobs) == 2 and t.token == t.top_logprobs[0].token for t in content)


def test_sdk_raises_on_a_bad_request(client):
    with pytest.raises(scale_gp.BadRequestError) as e:
        client.models.chat_completions.create("my-deployment", chat_history=[], prompt=PROMPT, stop_sequences=["a"] * 5)
    assert e.value.status_code == 400 and e.value.body["param"] == "stop_sequences"


async def collect(events, prompt: str) -> bytes:
    return b"".join([f async for f in sse_frames(events, translate.EgpCodec(prompt, logprobs=False))])


async def test_an_error_mid_stream_is_an_error_event_the_sdk_raises():
    async def events():  # one text delta, then the engine fails
        yield ChatEvent([ChoiceDelta(0, "Hel")], Usage(prompt_tokens=7, completion_tokens=1, estimated_cost=0.0))
        raise OverloadedError()

    raw = await collect(events(), "Hi")
    assert raw == (
        b'data: {"completions":[["Hi",["Hel"]]],"choices":[{"index":0,"logprobs":null}],"finish_reason":null}\n\n'
        b'event: error\ndata: {"detail":"the server is overloaded; retry shortly","code":"overloaded","param":null}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v4/models/dep/chat-completions"
        assert request.headers["x-api-key"] == "k" and request.headers["x-selected-account-id"] == "acct"
        return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    http_client = httpx.Client(transport=httpx.MockTransport(handler))
    with SGPClient(api_key="k", account_id="acct", base_url="http://chatforge.test", http_client=http_client) as c:
        stream = c.models.chat_completions.create("dep", chat_history=[], prompt="Hi", stream=True)
        first = next(iter(stream))
        assert first.completions == [["Hi", ["Hel"]]]
        with pytest.raises(scale_gp.APIStatusError) as e:
            next(iter(stream))
    assert e.value.body == {"detail": "the server is overloaded; retry shortly", "code": "overloaded", "param": None}


async def test_a_finished_stream_ends_with_the_counts_and_no_done():
    async def events():
        yield ChatEvent([ChoiceDelta(0, "Paris.", finish_reason=FinishReason.STOP)], Usage(7, 2, 0.0))
        yield ChatEvent([], usage=Usage(prompt_tokens=7, completion_tokens=2, estimated_cost=0.0), done=True)

    assert await collect(events(), "Q") == (
        b'data: {"completions":[["Q",["Paris."]]],"choices":[{"index":0,"logprobs":null}],"finish_reason":null}\n\n'
        b'data: {"completions":[["Q",[""]]],"choices":[{"index":0,"logprobs":null}],"finish_reason":"stop",'
        b'"prompt_tokens":7,"response_tokens":2}\n\n'
    )
