"""OpenAI / DeepInfra <-> the internal model. Everything this dialect decides (defaults, limits,
finish-reason spelling, chunk shapes) is here."""

from __future__ import annotations

from typing import Any

from chatforge.api.openai import tool_translate
from chatforge.api.openai.schemas import ChatCompletionRequest, ImagePart, Message, ProductChatCompletionRequest, SamplingFields
from chatforge.api.sse import TEXT_SLOT, TextFrame, data_frames, sse_data
from chatforge.api.wire import join_text_parts, logprobs_dict
from chatforge.errors import ChatforgeError
from chatforge.service.errors import InvalidRequestError
from chatforge.service.prepare import PreparedChat
from chatforge.service.protocol import (
    ChatEvent, ChatMessage, ChatRequest, ChatResult, Choice, FinishReason, SamplingParams, TokenLogprobs, Usage,
)

MAX_STOP = 4
# OpenAI's error `type` for each status.
KIND = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
        404: "not_found_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}
FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "stop",
    FinishReason.TOOL_CALLS: "tool_calls",
}


def to_internal(body: ChatCompletionRequest, request_id: str, *, max_tokens_cap: int | None = None) -> ChatRequest:
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens_cap is not None and max_tokens is not None and max_tokens > max_tokens_cap:
        raise InvalidRequestError(f"max_tokens must be at most {max_tokens_cap}", param="max_tokens")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    params = sampling_params(body, max_tokens=max_tokens, n=body.n, logprobs=body.logprobs,
                             top_logprobs=body.top_logprobs or 0)
    return ChatRequest(
        request_id=request_id,
        model=body.model,
        messages=[message(m, i) for i, m in enumerate(body.messages)],
        params=params,
        stream=body.stream,
        chat_template_kwargs=dict(body.chat_template_kwargs or {}),
        tools=tool_translate.tools(body.tools),
        tool_choice=tool_translate.tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        tool_prompt=body.tool_prompt if isinstance(body, ProductChatCompletionRequest) else None,
        output_format=tool_translate.output_format(body.response_format, body.structured_outputs),
    )


def sampling_params(body: SamplingFields, *, max_tokens: int | None, n: int, logprobs: bool, top_logprobs: int,
                    prompt_logprobs: int | None = None) -> SamplingParams:
    """The engine's parameters from the fields both routes share, with this dialect's defaults."""
    if max_tokens is not None and body.min_tokens > max_tokens:
        raise InvalidRequestError("min_tokens must not exceed max_tokens", param="min_tokens")
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(body.top_k or 0, 0),
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=_logit_bias(body.logit_bias),
        seed=None if body.seed is None else body.seed % 2**64,
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        stop=_stop(body.stop),
        stop_token_ids=list(body.stop_token_ids or []),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        n=n,
        prompt_logprobs=prompt_logprobs,
    )


def message(m: Message, i: int) -> ChatMessage:
    if m.tool_calls and m.role != "assistant":
        raise InvalidRequestError("only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls")
    if m.role == "tool" and m.tool_call_id is None:
        raise InvalidRequestError("a tool message needs the tool_call_id of the call it answers", param=f"messages[{i}].tool_call_id")
    if m.content is None and not (m.role == "assistant" and m.tool_calls):
        # OpenAI's rule: content may be null (or absent) only on an assistant turn that made calls
        raise InvalidRequestError(f"a {m.role} message needs content; only an assistant message with tool_calls "
                                  "may have none", param=f"messages[{i}].content")
    if isinstance(m.content, list):
        if any(isinstance(p, ImagePart) for p in m.content):
            raise InvalidRequestError("this model accepts text only", param=f"messages[{i}].content")
        content = join_text_parts(p.text for p in m.content)
    else:
        content = m.content if m.content is not None else None if m.tool_calls else ""
    role = "system" if m.role == "developer" else m.role
    return ChatMessage(role=role, content=content, name=m.name, tool_calls=tool_translate.past_calls(m.tool_calls),
                       tool_call_id=m.tool_call_id if m.role == "tool" else None)


def _stop(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise InvalidRequestError(f"stop accepts at most {MAX_STOP} sequences", param="stop")
    if any(s == "" for s in stops):
        raise InvalidRequestError("stop sequences must not be empty", param="stop")
    return stops


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit() or int(key) < 0:
            raise InvalidRequestError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")
        if not -100 <= value <= 100:
            raise InvalidRequestError("logit_bias values must be in [-100, 100]", param="logit_bias")
        out[int(key)] = float(value)
    return out


# -- responses -----------------------------------------------------------------------------------
def usage_dict(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "estimated_cost": u.estimated_cost,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def chat_logprobs(lps: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    """The choice's `logprobs`: `content` and `refusal`, both required (nullable) by OpenAI's schema."""
    out = logprobs_dict(lps)
    return None if out is None else {**out, "refusal": None}


def to_response(result: ChatResult, completion_id: str, model_name: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": result.created,
        "model": model_name,
        "choices": [
            {
                "index": c.index,
                "message": _message_dict(c),
                "logprobs": chat_logprobs(c.logprobs),
                "finish_reason": FINISH[c.finish_reason],
            }
            for c in result.choices
        ],
        "usage": usage_dict(result.usage),
    }


def _message_dict(c: Choice) -> dict[str, Any]:
    # refusal: required (nullable) by OpenAI's schema; chatforge's models never refuse by field
    if not c.tool_calls:
        return {"role": "assistant", "content": c.text, "refusal": None}
    return {"role": "assistant", "content": c.text or None, "refusal": None,
            "tool_calls": tool_translate.message_tool_calls(c.tool_calls)}


class ChatCodec:
    """One request's answer as `chat.completion`, or as `chat.completion.chunk` objects: the role
    in the first delta of each choice, a `finish_reason` chunk per choice, the usage chunk when
    asked, then `[DONE]` (also after an error object, as vLLM sends it)."""

    def __init__(self, prep: PreparedChat, completion_id: str, include_usage: bool, continuous_usage: bool):
        self.completion_id = completion_id
        self.model_name = prep.model_name
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": prep.created, "model": prep.model_name}
        self.started = [False] * prep.num_choices
        self.include_usage = include_usage
        self.continuous_usage = include_usage and continuous_usage
        self._text_frames: dict[int, TextFrame | None] = {}  # by choice index

    def response(self, result: ChatResult) -> dict[str, Any]:
        return to_response(result, self.completion_id, self.model_name)

    def stream_frames(self, event: ChatEvent) -> list[bytes]:
        """`stream_objects` as SSE frames. Nearly every event is one choice's next text and
        nothing else: its chunk is written from a template (api/sse.py TextFrame)."""
        if len(event.deltas) == 1 and not event.done and not self.continuous_usage:
            d = event.deltas[0]
            if d.text and self.started[d.index] and d.finish_reason is None and not (d.logprobs or d.tool_calls):
                if d.index not in self._text_frames:
                    self._text_frames[d.index] = TextFrame.of(self._chunk(d.index, {"content": TEXT_SLOT}, None, None, None))
                frame = self._text_frames[d.index]
                if frame is not None:
                    return [frame(d.text)]
        return data_frames(self.stream_objects(event))

    def stream_objects(self, event: ChatEvent) -> list[dict[str, Any]]:
        out = []
        for d in event.deltas:
            delta: dict[str, Any] = {}
            if not self.started[d.index]:
                self.started[d.index] = True
                delta["role"] = "assistant"
            if d.text or "role" in delta:
                # OpenAI's first delta of an answer that opens with a call: content null, the call's start
                delta["content"] = d.text or (None if d.tool_calls else "")
            calls = tool_translate.delta_tool_calls(d.tool_calls)
            if calls and not d.text:
                delta["tool_calls"] = [calls.pop(0)]
            if delta or d.logprobs:
                out.append(self._chunk(d.index, delta, d.logprobs, None, event.usage))
            out.extend(self._chunk(d.index, {"tool_calls": [call]}, None, None, event.usage) for call in calls)
            if d.finish_reason is not None:
                out.append(self._chunk(d.index, {}, None, FINISH[d.finish_reason], event.usage))
        if event.done and self.include_usage:
            out.append({**self.base, "choices": [], "usage": usage_dict(event.usage)})
        return out

    def _chunk(self, index, delta, lps, finish, usage) -> dict[str, Any]:
        chunk = {
            **self.base,
            "choices": [{"index": index, "delta": delta, "logprobs": chat_logprobs(lps), "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = usage_dict(usage) if self.continuous_usage else None
        return chunk

    def end_frames(self, error: ChatforgeError | None) -> list[bytes]:
        frames = [sse_data(error_dict(error))] if error is not None else []
        return [*frames, sse_data("[DONE]")]


def error_dict(err: ChatforgeError) -> dict[str, Any]:
    return error_body(err.message, KIND.get(err.status, "server_error"), err.code, err.param)


def error_body(message: str, type_: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
