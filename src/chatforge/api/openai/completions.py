"""OpenAI's legacy completions <-> the internal model. A raw prompt (a text, token ids, or a
batch of either; no chat template, so a base model without one works), `text_completion`
objects whole or streamed. `echo` puts each prompt before its completions, with its tokens'
logprobs when `logprobs` is set; `max_tokens: 0` with `echo` then scores the prompt alone, which
is how evaluation harnesses (lm-evaluation-harness's local-completions) rank continuations.

Logprobs are OpenAI's legacy object: `tokens`, `token_logprobs` (null for a prompt's first
token: nothing precedes it), `top_logprobs` (the `logprobs` likeliest tokens and the chosen one;
null for that first token) and `text_offset` (each token's start in the choice's text, counted
from the tokens' own text as vLLM does: a character split over tokens counts once per piece).
"""

from __future__ import annotations

from typing import Any

from chatforge.api.openai.schemas import CompletionRequest
from chatforge.api.openai.translate import FINISH, error_dict, sampling_params, usage_dict
from chatforge.api.sse import TEXT_SLOT, TextFrame, data_frames, sse_data
from chatforge.errors import ChatforgeError
from chatforge.service.errors import InvalidRequestError
from chatforge.service.prepare import PreparedChat
from chatforge.service.protocol import ChatEvent, ChatRequest, ChatResult, TokenLogprobs


def to_internal(body: CompletionRequest, request_id: str, *, max_tokens_cap: int | None = None) -> ChatRequest:
    if body.suffix:
        raise InvalidRequestError("suffix is not supported: chatforge's models do not fill in the middle", param="suffix")
    n = body.n or 1
    if body.best_of not in (None, n):
        raise InvalidRequestError(f"best_of must equal n ({n}): chatforge does not rank completions", param="best_of")
    max_tokens = body.max_tokens  # 16 when absent; null: the rest of the context
    if max_tokens == 0 and not body.echo:
        raise InvalidRequestError("max_tokens must be at least 1 unless echo is set", param="max_tokens")
    if max_tokens_cap is not None and max_tokens is not None and max_tokens > max_tokens_cap:
        raise InvalidRequestError(f"max_tokens must be at most {max_tokens_cap}", param="max_tokens")
    k = body.logprobs
    params = sampling_params(
        body, max_tokens=max_tokens or None, n=n, logprobs=k is not None,
        top_logprobs=k or 0, prompt_logprobs=k if body.echo else None,
    )
    return ChatRequest(
        request_id=request_id, model=body.model, messages=[], params=params, stream=bool(body.stream),
        prompts=_prompts(body.prompt), score_only=max_tokens == 0,
    )


def _prompts(prompt: str | list) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]  # one prompt as token ids
    return list(prompt)  # a batch of texts or of token id lists


class CompletionCodec:
    """One request's answer as a `text_completion` object, or streamed as such objects (each
    choice's text as it comes, the echoed prompt first; `finish_reason` with the last text; the
    usage object when asked), then `[DONE]` (also after an error object)."""

    def __init__(self, prep: PreparedChat, completion_id: str, echo: bool, logprobs: int | None,
                 include_usage: bool, continuous_usage: bool):
        self.base = {"id": completion_id, "object": "text_completion", "created": prep.created, "model": prep.model_name}
        self.prompts = [p.text for p in prep.prompts]
        self.n = prep.sampling.n
        self.echo = echo
        self.logprobs = logprobs is not None
        self.include_usage = include_usage
        self.continuous_usage = include_usage and continuous_usage
        self.offsets = [0] * prep.num_choices  # characters of each choice's text sent so far
        self.started = [False] * prep.num_choices
        self._text_frames: dict[int, TextFrame | None] = {}  # by choice index

    def response(self, result: ChatResult) -> dict[str, Any]:
        choices = []
        for c in result.choices:
            text, lps = self._start(c.index, c.text, c.prompt_logprobs, c.logprobs)
            choices.append({"index": c.index, "text": text, "logprobs": lps, "finish_reason": FINISH[c.finish_reason]})
        return {**self.base, "choices": choices, "usage": usage_dict(result.usage)}

    def stream_objects(self, event: ChatEvent) -> list[dict[str, Any]]:
        out = []
        for d in event.deltas:
            if self.started[d.index]:
                text, lps = d.text, self._logprobs(d.index, d.text, None, d.logprobs)
            else:
                text, lps = self._start(d.index, d.text, d.prompt_logprobs, d.logprobs)
            finish = FINISH[d.finish_reason] if d.finish_reason is not None else None
            chunk = {**self.base, "choices": [{"index": d.index, "text": text, "logprobs": lps, "finish_reason": finish}]}
            if self.continuous_usage:
                chunk["usage"] = usage_dict(event.usage)
            out.append(chunk)
        if event.done and self.include_usage:
            out.append({**self.base, "choices": [], "usage": usage_dict(event.usage)})
        return out

    def stream_frames(self, event: ChatEvent) -> list[bytes]:
        """`stream_objects` as SSE frames; one choice's next text alone (nearly every event) is
        written from a template (api/sse.py TextFrame)."""
        if len(event.deltas) == 1 and not event.done and not (self.continuous_usage or self.logprobs):
            d = event.deltas[0]
            if self.started[d.index] and d.finish_reason is None:
                if d.index not in self._text_frames:
                    chunk = {**self.base, "choices": [{"index": d.index, "text": TEXT_SLOT, "logprobs": None, "finish_reason": None}]}
                    self._text_frames[d.index] = TextFrame.of(chunk)
                frame = self._text_frames[d.index]
                if frame is not None:
                    self.offsets[d.index] += len(d.text)
                    return [frame(d.text)]
        return data_frames(self.stream_objects(event))

    def end_frames(self, error: ChatforgeError | None) -> list[bytes]:
        frames = [sse_data(error_dict(error))] if error is not None else []
        return [*frames, sse_data("[DONE]")]

    def _start(self, index: int, text: str, prompt_lps: list[TokenLogprobs] | None,
               lps: list[TokenLogprobs] | None) -> tuple[str, dict[str, Any] | None]:
        """A choice's first text: the echoed prompt (and its tokens) before the completion's."""
        self.started[index] = True
        if not self.echo:
            return text, self._logprobs(index, text, None, lps)
        prompt = self.prompts[index // self.n]
        return prompt + text, self._logprobs(index, prompt + text, prompt_lps, lps, prompt_chars=len(prompt))

    def _logprobs(self, index: int, text: str, prompt_lps: list[TokenLogprobs] | None,
                  lps: list[TokenLogprobs] | None, prompt_chars: int = 0) -> dict[str, Any] | None:
        """The legacy logprobs object for a piece of a choice's text; None unless asked for."""
        if not self.logprobs:
            self.offsets[index] += len(text)
            return None
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        start = self.offsets[index]
        _add(out, prompt_lps or [], start)
        _add(out, lps or [], start + prompt_chars)
        self.offsets[index] = start + len(text)
        return out


def _add(out: dict[str, list], lps: list[TokenLogprobs], offset: int) -> None:
    for lp in lps:
        token = lp.sampled
        out["tokens"].append(token.token)
        out["token_logprobs"].append(token.logprob)
        top = None
        if token.logprob is not None:
            top = {t.token: t.logprob for t in lp.top}
            top.setdefault(token.token, token.logprob)  # the chosen token is always listed
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(token.token)
