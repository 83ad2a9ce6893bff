"""Scale EGP v4 <-> the internal model. Everything this dialect decides lives here: the defaults
(temperature 0.2, max_tokens the rest of the context), the temperature clamp, what bindings may
set, the `completions` pairs, the finish-reason spelling and the streamed response objects."""

from __future__ import annotations

from typing import Any

from chatforge.api.egp.schemas import EgpBindings, EgpChatRequest, EgpHistoryMessage
from chatforge.api.sse import TEXT_SLOT, TextFrame, data_frames, sse_event
from chatforge.api.wire import join_text_parts, logprobs_dict
from chatforge.errors import ChatforgeError
from chatforge.platform.scopes import DeploymentScope
from chatforge.service.protocol import (
    ChatEvent, ChatMessage, ChatRequest, ChatResult, FinishReason, SamplingParams, TokenLogprobs,
)

DEFAULT_TEMPERATURE = 0.2
# The highest temperature a chatforge model takes; EGP clamps a larger value to its model's
# maximum instead of refusing it.
MAX_TEMPERATURE = 2.0
FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "stop",
}


def to_internal(body: EgpChatRequest, request_id: str) -> ChatRequest:
    """No model: the deployment's (the service resolves it with the deployment's scope)."""
    v = _sampling_values(body)
    params = SamplingParams(
        temperature=min(DEFAULT_TEMPERATURE if v.temperature is None else v.temperature, MAX_TEMPERATURE),
        top_p=1.0 if v.top_p is None else v.top_p,
        top_k=max(v.top_k or 0, 0),  # 0 and -1 both mean off
        min_p=v.min_p or 0.0,
        repetition_penalty=1.0 if v.repetition_penalty is None else v.repetition_penalty,
        frequency_penalty=v.frequency_penalty or 0.0,
        presence_penalty=v.presence_penalty or 0.0,
        seed=v.seed,
        max_tokens=v.max_tokens,
        stop=list(body.stop_sequences or []),
        logprobs=body.logprobs or bool(body.top_logprobs),
        top_logprobs=body.top_logprobs or 0,
    )
    messages = [_message(m) for m in body.chat_history] + [ChatMessage("user", body.prompt)]
    return ChatRequest(
        request_id=request_id, model=None, messages=messages, params=params, stream=body.stream,
        drop_oldest_turns=True, chat_template=body.chat_template,
        chat_template_kwargs=dict(body.chat_template_kwargs or {}),
    )


def _sampling_values(body: EgpChatRequest) -> EgpBindings:
    """The top-level sampling fields, each overridden by a binding of the same name."""
    top_level = body.model_dump(include=set(EgpBindings.model_fields), exclude_none=True)
    if "top_k" in top_level:
        top_level["top_k"] = int(top_level["top_k"])  # the schema made it a whole number
    bound = body.model_request_parameters.bindings if body.model_request_parameters else EgpBindings()
    return EgpBindings(**{**top_level, **bound.model_dump(exclude_none=True)})


def _message(m: EgpHistoryMessage) -> ChatMessage:
    if isinstance(m.content, str):
        return ChatMessage(m.role, m.content)
    return ChatMessage(m.role, join_text_parts(p.text for p in m.content))


# -- responses -----------------------------------------------------------------------------------
def response(prompt: str, text: str, logprobs: list[TokenLogprobs] | None, finish: str | None,
             prompt_tokens: int | None = None, response_tokens: int | None = None) -> dict[str, Any]:
    """`completions[0][0]` is the request's own `prompt` field, never the rendered template."""
    out: dict[str, Any] = {
        "completions": [[prompt, [text]]],
        "choices": [{"index": 0, "logprobs": logprobs_dict(logprobs)}],
        "finish_reason": finish,
    }
    if prompt_tokens is not None:
        out["prompt_tokens"], out["response_tokens"] = prompt_tokens, response_tokens
    return out


def to_response(result: ChatResult, prompt: str) -> dict[str, Any]:
    (c,) = result.choices
    u = result.usage
    return response(prompt, c.text, c.logprobs, FINISH[c.finish_reason], u.prompt_tokens, u.completion_tokens)


class EgpCodec:
    """One request's answer as a `CompletionResponse`, or streamed as whole response objects,
    each carrying only the new text in `completions[0][1][0]` (and its tokens' logprobs); the
    last one, with empty text, carries `finish_reason` and the token counts. No `[DONE]` (the SDK
    would parse it as a response); a failure is `event: error` with the error body."""

    def __init__(self, prompt: str, logprobs: bool):
        self.prompt = prompt
        self.logprobs = logprobs
        self.finish: FinishReason | None = None
        self._text_frame = TextFrame.of(response(prompt, TEXT_SLOT, None, None))

    def response(self, result: ChatResult) -> dict[str, Any]:
        return to_response(result, self.prompt)

    def stream_objects(self, event: ChatEvent) -> list[dict[str, Any]]:
        out = []
        for d in event.deltas:
            if d.text or d.logprobs:
                out.append(response(self.prompt, d.text, d.logprobs if self.logprobs else None, None))
            if d.finish_reason is not None:
                self.finish = d.finish_reason
        if event.done:
            finish = FINISH[self.finish or FinishReason.ABORT]
            u = event.usage
            out.append(response(self.prompt, "", [] if self.logprobs else None, finish, u.prompt_tokens, u.completion_tokens))
        return out

    def stream_frames(self, event: ChatEvent) -> list[bytes]:
        """`stream_objects` as SSE frames; the next text alone (nearly every event, without
        logprobs) is written from a template (api/sse.py TextFrame)."""
        if len(event.deltas) == 1 and not event.done and not self.logprobs and self._text_frame is not None:
            d = event.deltas[0]
            if d.text and d.finish_reason is None:
                return [self._text_frame(d.text)]
        return data_frames(self.stream_objects(event))

    def end_frames(self, error: ChatforgeError | None) -> list[bytes]:
        return [sse_event("error", error_body(error.code, error.message, error.param))] if error is not None else []


# The service names the conversation `messages`; here it is the history and the prompt.
PARAM_NAMES = {"messages": "chat_history"}


def error_body(code: str, message: str, param: str | None) -> dict[str, Any]:
    return {"detail": message, "code": code, "param": PARAM_NAMES.get(param, param)}


def deployment_item(scope: DeploymentScope, default_model: str) -> dict[str, Any]:
    """A deployment the caller may use, as an item of Scale's deployment list (a scope's model
    None means the server's default)."""
    owner = scope.record.account.name if scope.record is not None else None
    return {"id": scope.id, "name": scope.id, "account_id": owner, "model_instance_id": scope.model or default_model,
            "status": "READY"}
