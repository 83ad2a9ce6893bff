"""ChatService: one internal request in, a stream of events or one result out.

prepare() renders the chat template, tokenizes and checks the context (so platform guards can
admit the request with its real prompt size before any compute); stream() runs it on the engine,
turning token ids into text deltas with the text layer's detokenizer (stop strings held back and
cut); complete() is stream() gathered up.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import CompletionOutput, FinishReason, TokenLogprob
from chatforge.engine.sampling_params import SamplingParams
from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.service.errors import (
    ChatError, ContextLengthExceededError, EngineUnavailableError, GenerationFailedError, InvalidRequestError,
    OverloadedError,
)
from chatforge.service.protocol import (
    ChatEvent, ChatMessage, ChatRequest, ChatResult, Choice, ChoiceDelta, TokenInfo, TokenLogprobs, Usage,
)
from chatforge.text.chat_template import ChatTemplate, ChatTemplateError
from chatforge.text.named_templates import NAMED_TEMPLATES
from chatforge.text.detokenizer import IncrementalDetokenizer


@dataclass
class Timing:
    """Filled while a request runs; the API layer turns it into metrics."""

    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    end: float | None = None


@dataclass
class PreparedChat:
    request: ChatRequest
    model: ServedModel
    prompt: str
    prompt_ids: list[int]
    sampling: SamplingParams
    created: int = field(default_factory=lambda: int(time.time()))
    timing: Timing = field(default_factory=Timing)
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reasons: list[FinishReason | None] = field(default_factory=list)

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.completion_tokens,
            estimated_cost=self.model.price.cost(len(self.prompt_ids), self.completion_tokens),
            cached_tokens=self.cached_tokens,
        )


# Set by the service itself; a caller's template kwargs may not override them.
_RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "add_generation_prompt", "tools", "documents"})


@dataclass
class _Completion:
    """The text-side state of one of a request's n completions."""

    detok: IncrementalDetokenizer
    generated: int = 0
    finish_reason: FinishReason | None = None


class ChatService:
    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog

    # -- before any compute ------------------------------------------------------------------
    def prepare(self, req: ChatRequest) -> PreparedChat:
        model = self.catalog.get(req.model)
        template = model.template
        if req.chat_template is not None:
            try:
                template = ChatTemplate(req.chat_template, model.tokenizer.special_tokens)
            except ChatTemplateError as e:
                raise InvalidRequestError(f"chat_template: {e}", param="chat_template") from None
        if template is None:
            raise InvalidRequestError(
                f"the model `{model.model_id}` has no chat template, so it cannot take chat messages; "
                "the server's operator can give it one (--chat-template NAME_OR_FILE, named: "
                f"{', '.join(NAMED_TEMPLATES)}; or chat_template in its [[models]] entry)", param="model")
        messages = list(req.messages)
        ctx = model.context_length
        wanted = req.params.max_tokens
        while True:
            prompt = self._render(template, messages, req)
            ids = model.tokenizer.encode(prompt)
            if not ids:
                raise InvalidRequestError("the conversation renders to an empty prompt", param="messages")
            if req.truncate_prompt_tokens is not None:
                ids = ids[-req.truncate_prompt_tokens :]
            room = ctx - len(ids)
            if room >= (wanted or 1):
                break
            if req.drop_oldest_turns and _drop_oldest_turn(messages):
                continue
            raise _context_error(ctx, len(ids), wanted)
        max_tokens = wanted if wanted is not None else room
        return PreparedChat(req, model, prompt, ids, req.params.to_sampling_params(max_tokens))

    @staticmethod
    def _render(template: ChatTemplate, messages: list[ChatMessage], req: ChatRequest) -> str:
        clash = _RESERVED_TEMPLATE_VARIABLES.intersection(req.chat_template_kwargs)
        if clash:
            raise InvalidRequestError(
                f"chat_template_kwargs may not set {sorted(clash)}", param="chat_template_kwargs"
            )
        wire = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in messages]
        try:
            return template.render(wire, add_generation_prompt=req.add_generation_prompt, **req.chat_template_kwargs)
        except ChatTemplateError as e:
            # The model's own template can only refuse the messages; a template sent with the
            # request may just as well be at fault itself, so that is the parameter named.
            param = "chat_template" if req.chat_template is not None else "messages"
            raise InvalidRequestError(f"the chat template refused the conversation: {e}", param=param) from None

    # -- on the engine -------------------------------------------------------------------------
    async def stream(self, prep: PreparedChat) -> AsyncIterator[ChatEvent]:
        """Text deltas as they come; the last event carries the usage. Engine errors arrive as
        the service's typed errors."""
        try:
            async for event in self._stream(prep):
                yield event
        except engine_errors.EngineError as e:
            raise _service_error(e, prep) from e

    async def _stream(self, prep: PreparedChat) -> AsyncIterator[ChatEvent]:
        sp, engine = prep.sampling, prep.model.engine
        rid = prep.request.request_id
        completions = [_Completion(IncrementalDetokenizer(prep.model.tokenizer, sp.stop)) for _ in range(sp.n)]
        # aclosing: leaving the loop early (stop strings) closes the engine's stream at once,
        # instead of whenever the generator is collected.
        async with aclosing(engine.generate(rid, prep.prompt_ids, sp)) as outputs:
            async for out in outputs:
                prep.cached_tokens = out.num_cached_tokens
                deltas = [d for c in out.outputs if (d := self._delta(prep, completions[c.index], c)) is not None]
                prep.completion_tokens = sum(c.generated for c in completions)
                prep.finish_reasons = [c.finish_reason for c in completions]
                if deltas:
                    yield ChatEvent(deltas)
                if all(c.finish_reason is not None for c in completions):
                    if not out.finished:  # every completion stopped on a string: free the engine now
                        engine.finish(rid, FinishReason.STOP_SEQUENCE)
                    break
        prep.timing.end = time.perf_counter()
        yield ChatEvent([], usage=prep.usage())

    def _delta(self, prep: PreparedChat, state: _Completion, out: CompletionOutput) -> ChoiceDelta | None:
        """One completion's new tokens as text (stop strings held back and cut), or None."""
        if state.finish_reason is not None:
            return None  # ended on a stop string; the engine may still be finishing it
        state.generated = out.num_generated
        step = state.detok.push(out.new_token_ids)
        text, reason = step.delta, out.finish_reason
        if step.stop is not None:
            reason = FinishReason.STOP_SEQUENCE
        elif reason is not None:
            text += state.detok.flush()
        state.finish_reason = reason
        tokenizer = prep.model.tokenizer
        lps = [self._logprobs(tokenizer, lp) for lp in out.new_logprobs] if prep.sampling.logprobs and out.new_logprobs else None
        if not (text or reason is not None or lps):
            return None
        if text and prep.timing.first_token is None:
            prep.timing.first_token = time.perf_counter()
        return ChoiceDelta(out.index, text, lps, reason)

    async def complete(self, prep: PreparedChat) -> ChatResult:
        texts = [""] * prep.sampling.n
        logprobs: list[list[TokenLogprobs] | None] = [[] if prep.sampling.logprobs else None for _ in texts]
        usage = None
        async for event in self.stream(prep):
            for d in event.deltas:
                texts[d.index] += d.text
                if d.logprobs:
                    logprobs[d.index].extend(d.logprobs)
            usage = event.usage or usage
        choices = [
            Choice(i, texts[i], prep.finish_reasons[i] or FinishReason.ABORT, logprobs[i]) for i in range(len(texts))
        ]
        return ChatResult(prep.request.request_id, prep.model.model_id, prep.created, prep.prompt, choices, usage)

    @staticmethod
    def _logprobs(tokenizer, lp: TokenLogprob) -> TokenLogprobs:
        def info(token_id: int, logprob: float) -> TokenInfo:
            raw = tokenizer.token_bytes(token_id)
            return TokenInfo(raw.decode("utf-8", errors="replace"), token_id, list(raw), logprob)

        return TokenLogprobs(info(lp.token_id, lp.logprob), [info(t, p) for t, p in lp.top])


def _service_error(e: engine_errors.EngineError, prep: PreparedChat) -> ChatError:
    if isinstance(e, engine_errors.EngineOverloadedError):
        return OverloadedError()
    if isinstance(e, engine_errors.PromptTooLongError):
        return _context_error(e.max_prompt_tokens + max(1, prep.sampling.min_tokens), e.prompt_tokens, prep.sampling.max_tokens)
    if isinstance(e, engine_errors.InvalidRequestError):
        return InvalidRequestError(str(e))
    if isinstance(e, engine_errors.StepFailedError):
        return GenerationFailedError("the engine failed while generating this response; the request was ended")
    return EngineUnavailableError(f"the engine cannot serve this request: {e}")


def _drop_oldest_turn(messages: list[ChatMessage]) -> bool:
    """Remove the oldest non-system message, keeping at least the newest one."""
    for i, m in enumerate(messages[:-1]):
        if m.role != "system":
            del messages[i]
            return True
    return False


def _context_error(ctx: int, prompt_tokens: int, wanted: int | None) -> ContextLengthExceededError:
    if wanted is None:
        msg = (
            f"This model's maximum context length is {ctx} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens, which leaves no room for a completion. Please reduce the length of the messages."
        )
    else:
        msg = (
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, {wanted} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    return ContextLengthExceededError(msg, prompt_tokens=prompt_tokens, context_length=ctx)
