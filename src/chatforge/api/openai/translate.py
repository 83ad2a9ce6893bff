"""OpenAI / DeepInfra <-> the internal model. Everything this dialect decides (defaults, limits,
finish-reason spelling, chunk shapes) is here."""

from __future__ import annotations

from typing import Any

from chatforge.api.openai.schemas import ChatCompletionRequest, ImagePart, Message
from chatforge.engine.outputs import FinishReason
from chatforge.service.errors import InvalidRequestError
from chatforge.service.protocol import (
    ChatEvent, ChatMessage, ChatRequest, ChatResult, GenerationParams, TokenLogprobs, Usage,
)

MAX_STOP = 4
FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "stop",
}


def to_internal(body: ChatCompletionRequest, request_id: str, *, max_tokens_cap: int | None = None) -> ChatRequest:
    _refuse_unsupported(body)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens_cap is not None and max_tokens is not None and max_tokens > max_tokens_cap:
        raise InvalidRequestError(f"max_tokens must be at most {max_tokens_cap}", param="max_tokens")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    params = GenerationParams(
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
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        n=body.n,
    )
    if max_tokens is not None and body.min_tokens > max_tokens:
        raise InvalidRequestError("min_tokens must not exceed max_tokens", param="min_tokens")
    return ChatRequest(
        request_id=request_id,
        model=body.model,
        messages=[_message(m, i) for i, m in enumerate(body.messages)],
        params=params,
        chat_template_kwargs=dict(body.chat_template_kwargs or {}),
    )


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    # Refused loudly until constrained decoding and tool calling land, never silently ignored.
    if body.tools:
        raise InvalidRequestError("tools are not supported by this server yet", param="tools")
    if body.tool_choice not in (None, "none", "auto"):
        raise InvalidRequestError("tool_choice requires tools, which this server does not support yet", param="tool_choice")
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise InvalidRequestError(
            "response_format other than {'type': 'text'} is not supported by this server yet", param="response_format"
        )


def _message(m: Message, i: int) -> ChatMessage:
    if m.tool_calls:
        raise InvalidRequestError("assistant tool_calls are not supported yet", param=f"messages[{i}].tool_calls")
    if isinstance(m.content, list):
        if any(isinstance(p, ImagePart) for p in m.content):
            raise InvalidRequestError("this model accepts text only", param=f"messages[{i}].content")
        content = "\n".join(p.text for p in m.content)  # text parts joined as vLLM does
    else:
        content = m.content or ""
    role = "system" if m.role == "developer" else m.role
    return ChatMessage(role=role, content=content, name=m.name)


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


def logprobs_dict(lps: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {
        "content": [
            {
                "token": lp.sampled.token,
                "logprob": lp.sampled.logprob,
                "bytes": lp.sampled.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top],
            }
            for lp in lps
        ]
    }


def to_response(result: ChatResult, completion_id: str, model_name: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": result.created,
        "model": model_name,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs_dict(c.logprobs),
                "finish_reason": FINISH[c.finish_reason],
            }
            for c in result.choices
        ],
        "usage": usage_dict(result.usage),
    }


class ChunkWriter:
    """Renders one request's events as `chat.completion.chunk` objects: the role in the first
    delta of each choice, a `finish_reason` chunk per choice, the usage chunk when asked."""

    def __init__(self, completion_id: str, model_name: str, created: int, n: int, include_usage: bool, continuous_usage: bool):
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name}
        self.started = [False] * n
        self.include_usage = include_usage
        self.continuous_usage = include_usage and continuous_usage

    def chunks(self, event: ChatEvent, running_usage: Usage | None = None) -> list[dict[str, Any]]:
        out = []
        for d in event.deltas:
            delta: dict[str, Any] = {}
            if not self.started[d.index]:
                self.started[d.index] = True
                delta["role"] = "assistant"
            if d.text or "role" in delta:
                delta["content"] = d.text
            if delta or d.logprobs:
                out.append(self._chunk(d.index, delta, d.logprobs, None, running_usage))
            if d.finish_reason is not None:
                out.append(self._chunk(d.index, {}, None, FINISH[d.finish_reason], running_usage))
        if event.usage is not None and self.include_usage:
            out.append({**self.base, "choices": [], "usage": usage_dict(event.usage)})
        return out

    def _chunk(self, index, delta, lps, finish, usage) -> dict[str, Any]:
        chunk = {
            **self.base,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs_dict(lps), "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = usage_dict(usage) if self.continuous_usage and usage is not None else None
        return chunk


def error_body(message: str, type_: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
