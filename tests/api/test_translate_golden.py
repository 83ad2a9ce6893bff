"""Each dialect's translation, pinned by golden JSON (tests/api/golden/): a wire body becomes this
internal request, and these internal results and events become these answers and stream objects.
No server, no model: the pure functions of each translate.py.

To rewrite the files after an intended change: CHATFORGE_UPDATE_GOLDEN=1 pytest tests/api/test_translate_golden.py,
then read the diff."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from chatforge.api.egp import translate as egp
from chatforge.api.egp.schemas import EgpChatRequest
from chatforge.api.infomaniak import translate as infomaniak
from chatforge.api.infomaniak.schemas import LegacyRequest
from chatforge.api.openai import completions
from chatforge.api.openai import translate as openai
from chatforge.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from chatforge.service.errors import ContextLengthExceededError
from chatforge.service.prepare import PreparedChat, Prompt
from chatforge.service.protocol import (
    ChatEvent, ChatResult, Choice, ChoiceDelta, FinishReason, SamplingParams, TokenInfo, TokenLogprobs, Usage,
)

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str, value) -> None:
    path = GOLDEN / f"{name}.json"
    got = json.loads(json.dumps(value, default=_plain))
    if os.environ.get("CHATFORGE_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(path.read_text()), f"{name} differs from {path}"


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, FinishReason):
        return value.value
    raise TypeError(type(value))


def prep(n: int = 1, stream: bool = False, model_name: str = "smollm2") -> PreparedChat:
    """A prepared request of one prompt, "<prompt>" (3 tokens)."""
    from chatforge.service.protocol import ChatRequest

    req = ChatRequest("rid", model_name, [], SamplingParams(max_tokens=8, n=n), stream=stream)
    return PreparedChat(req, None, model_name, (Prompt("<prompt>", (1, 2, 3)),), req.params, created=1700000000)


def lp(token: str, token_id: int, logprob: float, *top: tuple[str, int, float]) -> TokenLogprobs:
    info = TokenInfo(token, token_id, list(token.encode()), logprob)
    return TokenLogprobs(info, [TokenInfo(t, i, list(t.encode()), p) for t, i, p in top])


USAGE = Usage(prompt_tokens=3, completion_tokens=2, estimated_cost=0.0000045, cached_tokens=1)
RESULT = ChatResult("rid", "HuggingFaceTB/SmolLM2-135M-Instruct", 1700000000, [
    Choice(0, "Paris.", FinishReason.STOP, [lp("Paris", 9, -0.25, ("Paris", 9, -0.25), ("Lyon", 10, -2.0)), lp(".", 11, -0.5, (".", 11, -0.5), ("!", 12, -1.5))]),
], USAGE)
EVENTS = [
    ChatEvent([ChoiceDelta(0, "Par", [lp("Par", 9, -0.25, ("Par", 9, -0.25))])], Usage(3, 1, 0.000003, 1)),
    ChatEvent([ChoiceDelta(0, "is.", [lp("is.", 11, -0.5, ("is.", 11, -0.5))], FinishReason.STOP)], USAGE, done=True),
]


# -- OpenAI -------------------------------------------------------------------------------------
def test_openai_request():
    body = ChatCompletionRequest.model_validate({
        "model": "smollm2", "stream": True, "temperature": 0.3, "top_p": 0.9, "top_k": -1, "n": 2, "seed": -1,
        "max_completion_tokens": 20, "stop": "END", "logprobs": True, "top_logprobs": 2, "logit_bias": {"42": -100},
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    })
    golden("openai_request", openai.to_internal(body, "chatcmpl-1"))


def test_openai_response_and_chunks():
    codec = openai.ChatCodec(prep(), "chatcmpl-1", include_usage=True, continuous_usage=False)
    golden("openai_response", codec.response(RESULT))
    golden("openai_chunks", [obj for e in EVENTS for obj in codec.stream_objects(e)])
    continuous = openai.ChatCodec(prep(), "chatcmpl-1", include_usage=True, continuous_usage=True)
    golden("openai_chunks_continuous_usage", [obj for e in EVENTS for obj in continuous.stream_objects(e)])


def test_openai_error_frames():
    err = ContextLengthExceededError("too long", prompt_tokens=9, context_length=8)
    codec = openai.ChatCodec(prep(), "chatcmpl-1", include_usage=False, continuous_usage=False)
    assert codec.end_frames(err) == [
        b'data: {"error":{"message":"too long","type":"invalid_request_error","param":"messages",'
        b'"code":"context_length_exceeded"}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert codec.end_frames(None) == [b"data: [DONE]\n\n"]


# -- OpenAI's legacy completions --------------------------------------------------------------------
def test_completions_request():
    body = CompletionRequest.model_validate({
        "model": "smollm2", "prompt": [[1, 2, 3], [4, 5]], "echo": True, "logprobs": 2, "max_tokens": 0,
        "n": 2, "best_of": 2, "temperature": 0, "stop": ["\n"], "stream": None, "suffix": "",
    })
    golden("completions_request", completions.to_internal(body, "cmpl-1"))


def test_completions_response_and_chunks():
    prompt_lps = [lp("<prompt", 1, None), lp(">", 2, -3.0, ("!", 4, -1.0), (">", 2, -3.0))]
    result = dataclasses.replace(RESULT, choices=[dataclasses.replace(RESULT.choices[0], prompt_logprobs=prompt_lps)])
    codec = completions.CompletionCodec(prep(), "cmpl-1", echo=True, logprobs=1, include_usage=True, continuous_usage=False)
    golden("completions_response", codec.response(result))
    events = [ChatEvent([dataclasses.replace(EVENTS[0].deltas[0], prompt_logprobs=prompt_lps)], EVENTS[0].usage), EVENTS[1]]
    codec = completions.CompletionCodec(prep(), "cmpl-1", echo=True, logprobs=1, include_usage=True, continuous_usage=False)
    golden("completions_chunks", [obj for e in events for obj in codec.stream_objects(e)])


# -- Infomaniak ---------------------------------------------------------------------------------
def test_infomaniak_request():
    body = LegacyRequest.model_validate({
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Bye"}],
        "system_prompt": "Be brief.", "profile_type": "creative", "top_k": 5.0, "max_new_tokens": 10,
        "truncate": 100, "stop": ["x"], "seed": 3,
    })
    golden("infomaniak_request", infomaniak.to_internal(body, "llm-1"))


def test_infomaniak_response_and_stream():
    codec = infomaniak.LegacyCodec.of(prep())
    golden("infomaniak_response", codec.response(RESULT))
    golden("infomaniak_stream", [obj for e in EVENTS for obj in codec.stream_objects(e)])
    assert codec.end_frames(None) == [b"data: [DONE]\n\n"]


# -- EGP ----------------------------------------------------------------------------------------
def test_egp_request():
    body = EgpChatRequest.model_validate({
        "chat_history": [{"role": "system", "content": "Be brief."},
                         {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                         {"role": "assistant", "content": "c"}],
        "prompt": "Hi", "temperature": 5, "top_k": 3.0, "max_tokens": 7, "stop_sequences": ["!"],
        "top_logprobs": 2, "model_request_parameters": {"bindings": {"top_k": 4.0, "seed": 9}},
        "chat_template_kwargs": {"lang": "fr"},
    })
    golden("egp_request", egp.to_internal(body, "egp-1"))


def test_egp_response_and_stream():
    codec = egp.EgpCodec("Hi", logprobs=True)
    golden("egp_response", codec.response(RESULT))
    golden("egp_stream", [obj for e in EVENTS for obj in codec.stream_objects(e)])
    assert codec.end_frames(None) == []


def test_no_golden_file_is_stale():
    names = {p.stem for p in GOLDEN.glob("*.json")}
    assert names == {
        "openai_request", "openai_response", "openai_chunks", "openai_chunks_continuous_usage",
        "completions_request", "completions_response", "completions_chunks",
        "infomaniak_request", "infomaniak_response", "infomaniak_stream",
        "egp_request", "egp_response", "egp_stream",
    }
