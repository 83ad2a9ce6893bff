"""Infomaniak legacy <-> the internal model. Everything this dialect decides lives here: the
`profile_type` presets, the turn-order rule, TGI's finish-reason spelling, the `{result, data}`
envelope, the streamed `data` objects and the error codes."""

from __future__ import annotations

from typing import Any

from chatforge.api.infomaniak.schemas import LegacyRequest, ProfilePreset
from chatforge.api.sse import TEXT_SLOT, TextFrame, data_frames, sse_data, sse_event
from chatforge.errors import ChatforgeError
from chatforge.service.errors import InvalidRequestError
from chatforge.service.prepare import PreparedChat
from chatforge.service.protocol import (
    ChatEvent, ChatMessage, ChatRequest, ChatResult, FinishReason, SamplingParams, Usage,
)

DEFAULT_PROFILE = "standard"
# The published presets (README, `GET /1/llm/profiles`). Any parameter the request sets itself
# overrides its preset's value; top_k None = off.
PROFILES: dict[str, ProfilePreset] = {
    "creative": ProfilePreset(temperature=1.0, top_p=0.95, top_k=100, repetition_penalty=1.0),
    "standard": ProfilePreset(temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.05),
    "strict": ProfilePreset(temperature=0.0, top_p=1.0, top_k=None, repetition_penalty=1.0),
}

# TGI's vocabulary. An aborted request (server shutting down) was cut short: `length`.
FINISH = {
    FinishReason.STOP: "eos_token",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "length",
}

# The envelope's error codes by HTTP status; 400 and 404 keep a more precise service code.
ERROR_CODES = {400: "validation_error", 401: "not_authorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "request_too_large", 429: "rate_limit_exceeded",
               499: "client_closed_request",
               500: "internal_error", 503: "service_unavailable"}
KEPT_CODES = {"context_length_exceeded", "model_not_found", "model_not_allowed", "product_not_found"}


def to_internal(body: LegacyRequest, request_id: str) -> ChatRequest:
    """No `model`: the product's default (the service resolves it with the product's scope)."""
    _check_turns(body)
    preset = PROFILES[body.profile_type or DEFAULT_PROFILE]
    # A parameter the request sets overrides its preset's value.
    params = SamplingParams(
        temperature=body.temperature if body.temperature is not None else preset.temperature,
        top_p=body.top_p if body.top_p is not None else preset.top_p,
        top_k=body.top_k if body.top_k is not None else preset.top_k or 0,
        typical_p=body.typical_p if body.typical_p is not None else 1.0,
        repetition_penalty=body.repetition_penalty if body.repetition_penalty is not None else preset.repetition_penalty,
        frequency_penalty=body.frequency_penalty if body.frequency_penalty is not None else 0.0,
        seed=body.seed,
        max_tokens=body.max_new_tokens,
        stop=list(body.stop or []),
    )
    messages = [ChatMessage("system", body.system_prompt)] if body.system_prompt is not None else []
    messages += [ChatMessage(m.role, m.content) for m in body.messages]
    return ChatRequest(
        request_id=request_id, model=body.model, messages=messages, params=params, stream=body.stream,
        truncate_prompt_tokens=body.truncate,
    )


def _check_turns(body: LegacyRequest) -> None:
    for i, m in enumerate(body.messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise InvalidRequestError(
                f"messages[{i}].role must be {expected!r}: roles alternate user/assistant, starting with user",
                param=f"messages[{i}].role",
            )
    if body.messages[-1].role != "user":
        raise InvalidRequestError("the last message must have the user role", param="messages")


# -- responses -----------------------------------------------------------------------------------
def usage_dict(u: Usage) -> dict[str, int]:
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def to_response(result: ChatResult, model_name: str) -> dict[str, Any]:
    (choice,) = result.choices
    data = {
        "model": model_name,
        "created": result.created,
        "choices": [{
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text},
            "finish_reason": FINISH[choice.finish_reason],
        }],
        "usage": usage_dict(result.usage),
    }
    return {"result": "success", "data": data}


class LegacyCodec:
    """One request's answer as the `{result, data}` envelope, or streamed as `data` objects: the
    role in the first delta, text deltas as they come, then one last object with `finish_reason`
    and the usage, then `[DONE]`; after a failure, `event: error` with the envelope, and no more."""

    def __init__(self, model_name: str, created: int):
        self.model_name = model_name
        self.base = {"model": model_name, "created": created}
        self.started = False
        self.finish: FinishReason | None = None
        self._text_frame = TextFrame.of(self._data({"content": TEXT_SLOT}, None, None))

    @classmethod
    def of(cls, prep: PreparedChat) -> LegacyCodec:
        return cls(prep.model_name, prep.created)

    def response(self, result: ChatResult) -> dict[str, Any]:
        return to_response(result, self.model_name)

    def stream_objects(self, event: ChatEvent) -> list[dict[str, Any]]:
        out = []
        for d in event.deltas:
            if d.text or not self.started:
                delta = {"content": d.text} if self.started else {"role": "assistant", "content": d.text}
                self.started = True
                out.append(self._data(delta, None, None))
            if d.finish_reason is not None:
                self.finish = d.finish_reason
        if event.done:
            out.append(self._data({}, FINISH[self.finish or FinishReason.ABORT], usage_dict(event.usage)))
        return out

    def stream_frames(self, event: ChatEvent) -> list[bytes]:
        """`stream_objects` as SSE frames; the next text alone (nearly every event) is written
        from a template (api/sse.py TextFrame)."""
        if len(event.deltas) == 1 and not event.done and self.started and self._text_frame is not None:
            d = event.deltas[0]
            if d.text and d.finish_reason is None:
                return [self._text_frame(d.text)]
        return data_frames(self.stream_objects(event))

    def _data(self, delta: dict, finish: str | None, usage: dict | None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}

    def end_frames(self, error: ChatforgeError | None) -> list[bytes]:
        if error is not None:
            return [sse_event("error", error_body(error.status, error.code, error.message))]
        return [sse_data("[DONE]")]


def error_code(status: int, code: str) -> str:
    return code if code in KEPT_CODES else ERROR_CODES.get(status, "error")


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"result": "error", "error": {"code": error_code(status, code), "description": message}}


def profiles_body() -> dict[str, Any]:
    return {"result": "success", "data": {name: p.model_dump() for name, p in PROFILES.items()}}
