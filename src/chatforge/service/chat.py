"""ChatService: one internal request in, a stream of events or one result out.

`prepare()` (service/prepare.py) resolves the model, renders and tokenizes, checks the context
and compiles the request's grammar, so platform guards can admit the request with its real
prompt size before any compute; `stream()` runs each prompt on the engine, turning token ids
into content deltas and tool-call events with the text layer's output reader (stop strings held
back and cut, tool calls parsed: text/output_reader.py); `gather()` collects a stream into one
result, so a whole answer is its stream assembled. Every event carries the running usage,
priced once here; the last one is `done`.

Finish reasons are decided here for every dialect: `tool_calls` when an answer that ended
normally made calls (`length` stays `length`: a call cut short is sent as far as it got), and a
grammar that failed (`GRAMMAR_ERROR` from the engine) is a `ConstraintFailedError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput, TokenLogprob
from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.service.errors import (
    ChatError, ConstraintFailedError, EngineUnavailableError, GenerationFailedError, GenerationInterruptedError,
    InvalidRequestError, OverloadedError,
)
from chatforge.service.merge import merged
from chatforge.service.prepare import PreparedChat, context_error, prepare, resolve_model
from chatforge.service.protocol import (
    ChatEvent, ChatRequest, ChatResult, Choice, ChoiceDelta, ModelScope, TokenInfo, TokenLogprobs, ToolCall,
    ToolCallStart, Usage,
)
from chatforge.text.output_reader import OutputReader


@dataclass
class _Completion:
    """The text-side state of one completion."""

    reader: OutputReader
    generated: int = 0
    finish_reason: FinishReason | None = None
    started: bool = False  # a delta was sent


class _PromptRun:
    """One prompt's engine request and its n completions' text."""

    def __init__(self, prep: PreparedChat, index: int):
        self.prep = prep
        self.index = index
        self.request_id = engine_request_id(prep, index)
        tokenizer, sp = prep.model.tokenizer, prep.sampling
        self.completions = [_Completion(OutputReader(tokenizer, sp.stop, prep.tool_format)) for _ in range(sp.n)]
        self.cached_tokens = 0
        self.prompt_logprobs: list[TokenLogprobs] | None = None
        # Kept as the completions change (read once per token: no sums over the completions).
        self.generated = 0  # tokens generated, all completions together
        self.unfinished = sp.n  # completions without a finish reason yet

    def outputs(self) -> AsyncIterator[RequestOutput]:
        return self.prep.model.engine.generate(self.request_id, list(self.prep.prompts[self.index].token_ids), self.prep.sampling)

    @property
    def done(self) -> bool:
        return self.unfinished == 0

    def deltas(self, out: RequestOutput) -> list[ChoiceDelta]:
        self.cached_tokens = out.num_cached_tokens
        if out.prompt_logprobs is not None:
            tokenizer = self.prep.model.tokenizer
            first = TokenLogprobs(token_info(tokenizer, self.prep.prompts[self.index].token_ids[0], None), [])
            self.prompt_logprobs = [first, *(token_logprobs(tokenizer, lp) for lp in out.prompt_logprobs[1:])]
        deltas = [d for c in out.outputs if (d := self._delta(self.completions[c.index], c)) is not None]
        if self.done and not out.finished:  # every completion stopped on a string: free the engine now
            self.prep.model.engine.finish(self.request_id, FinishReason.STOP_SEQUENCE)
        return deltas

    def _delta(self, state: _Completion, out: CompletionOutput) -> ChoiceDelta | None:
        """One completion's new tokens as text (stop strings held back and cut), or None."""
        if state.finish_reason is not None:
            return None  # ended on a stop string; the engine may still be finishing it
        calls = []
        if self.prep.request.score_only:  # the one sampled token is dropped
            text, lps = "", None
            reason = FinishReason.LENGTH if out.finish_reason is not None else None
        else:
            if out.finish_reason is FinishReason.GRAMMAR_ERROR:
                raise ConstraintFailedError(out.error or "the output's grammar failed")
            self.generated += out.num_generated - state.generated
            state.generated = out.num_generated
            step = state.reader.push(out.new_token_ids)
            reason = out.finish_reason
            if step.stop is None and reason is not None:
                end = state.reader.finish(cut=reason is FinishReason.LENGTH)
                step.text += end.text
                step.tool_calls += end.tool_calls
            text, calls = step.text, step.tool_calls
            if step.stop is not None:
                reason = FinishReason.STOP_SEQUENCE
            elif reason is FinishReason.STOP and state.reader.calls:
                reason = FinishReason.TOOL_CALLS
            tokenizer = self.prep.model.tokenizer
            wanted = self.prep.sampling.logprobs and out.new_logprobs
            lps = [token_logprobs(tokenizer, lp) for lp in out.new_logprobs] if wanted else None
        state.finish_reason = reason
        if reason is not None:
            self.unfinished -= 1
        prompt_lps = self.prompt_logprobs if not state.started else None
        if not (text or calls or reason is not None or lps or prompt_lps):
            return None
        state.started = True
        return ChoiceDelta(self.index * self.prep.sampling.n + out.index, text, lps, reason, prompt_lps, calls)


def engine_request_id(prep: PreparedChat, index: int) -> str:
    """The engine's id for the request's prompt `index` (one engine request per prompt)."""
    return prep.request.request_id if len(prep.prompts) == 1 else f"{prep.request.request_id}.{index}"


class ChatService:
    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog

    def end(self, prep: PreparedChat, reason: FinishReason = FinishReason.LENGTH) -> None:
        """End the request's engine work now (drain, timeout): every unfinished completion
        finishes with `reason`, and its stream ends as usual, with a last event and usage.
        Idempotent; a request the engine no longer holds is left alone."""
        for index in range(len(prep.prompts)):
            prep.model.engine.finish(engine_request_id(prep, index), reason)

    def resolve(self, req: ChatRequest, scope: ModelScope | None = None) -> ServedModel:
        """The model the request would run on, before anything is rendered or tokenized."""
        return resolve_model(self.catalog, req, scope)

    def prepare(self, req: ChatRequest, scope: ModelScope | None = None) -> PreparedChat:
        return prepare(self.catalog, req, scope)

    async def stream(self, prep: PreparedChat) -> AsyncIterator[ChatEvent]:
        """Text deltas as they come, each event with the running usage; the last one is `done`.
        Engine errors arrive as the service's typed errors.

        NOTE: one generator, with the engine's as the only one below it when there is one prompt
        (a chat): a stream goes through every layer once per token."""
        runs = [_PromptRun(prep, i) for i in range(len(prep.prompts))]
        usage = _Usage(prep, runs)
        one = runs[0] if len(runs) == 1 else None
        # Leaving the loop early (stop strings) closes the engine streams at once, instead of
        # whenever the generator is collected.
        outputs = one.outputs() if one is not None else merged([run.outputs() for run in runs])
        try:
            async with aclosing(outputs):
                async for item in outputs:
                    run, out = (one, item) if one is not None else (runs[item[0]], item[1])
                    deltas = run.deltas(out)
                    done = run.done and (one is not None or all(r.done for r in runs))
                    yield ChatEvent(deltas, usage(), done)
                    if done:
                        return
            yield ChatEvent([], usage(), True)  # the engine ended a request without finishing it
        except engine_errors.EngineError as e:
            raise _service_error(e, prep) from e

    async def complete(self, prep: PreparedChat) -> ChatResult:
        return await gather(prep, self.stream(prep))


async def gather(prep: PreparedChat, events: AsyncIterator[ChatEvent]) -> ChatResult:
    """One result from a request's events: each choice's text, logprobs and finish reason."""
    n = prep.num_choices
    texts = [""] * n
    calls: list[list[ToolCall]] = [[] for _ in range(n)]
    logprobs: list[list[TokenLogprobs] | None] = [[] if prep.sampling.logprobs else None for _ in range(n)]
    prompt_logprobs: list[list[TokenLogprobs] | None] = [None] * n
    finish: list[FinishReason | None] = [None] * n
    usage = Usage(prep.num_prompt_tokens, 0, prep.model.price.cost(prep.num_prompt_tokens, 0))
    async for event in events:
        for d in event.deltas:
            texts[d.index] += d.text
            for c in d.tool_calls:
                if isinstance(c, ToolCallStart):
                    calls[d.index].append(ToolCall(c.id, c.name))
                else:
                    calls[d.index][c.index].arguments += c.text
            if d.logprobs:
                logprobs[d.index].extend(d.logprobs)
            if d.prompt_logprobs is not None:
                prompt_logprobs[d.index] = d.prompt_logprobs
            finish[d.index] = d.finish_reason or finish[d.index]
        usage = event.usage
    choices = [Choice(i, texts[i], finish[i] or FinishReason.ABORT, logprobs[i], prompt_logprobs[i], calls[i])
               for i in range(n)]
    return ChatResult(prep.request.request_id, prep.model.model_id, prep.created, choices, usage)


class _Usage:
    """The running usage of a request's runs, priced: one Usage per event."""

    def __init__(self, prep: PreparedChat, runs: list[_PromptRun]):
        self.prompt_tokens = prep.num_prompt_tokens
        self.price = prep.model.price
        self.runs = runs

    def __call__(self) -> Usage:
        runs = self.runs
        if len(runs) == 1:
            completion, cached = runs[0].generated, runs[0].cached_tokens
        else:
            completion, cached = sum(run.generated for run in runs), sum(run.cached_tokens for run in runs)
        return Usage(self.prompt_tokens, completion, self.price.cost(self.prompt_tokens, completion), cached)


def token_info(tokenizer, token_id: int, logprob: float | None) -> TokenInfo:
    raw = tokenizer.token_bytes(token_id)
    return TokenInfo(raw.decode("utf-8", errors="replace"), token_id, list(raw), logprob)


def token_logprobs(tokenizer, lp: TokenLogprob) -> TokenLogprobs:
    return TokenLogprobs(token_info(tokenizer, lp.token_id, lp.logprob), [token_info(tokenizer, t, p) for t, p in lp.top])


def _service_error(e: engine_errors.EngineError, prep: PreparedChat) -> ChatError:
    if isinstance(e, engine_errors.EngineOverloadedError):
        return OverloadedError()
    if isinstance(e, engine_errors.PromptTooLongError):
        return context_error(e.max_prompt_tokens + max(1, prep.sampling.min_tokens), e.prompt_tokens, prep.sampling.max_tokens)
    if isinstance(e, engine_errors.InvalidRequestError):
        return InvalidRequestError(str(e), param=e.param)
    if isinstance(e, engine_errors.RequestLostError):
        return GenerationInterruptedError(str(e))
    if isinstance(e, engine_errors.StepFailedError):
        return GenerationFailedError("the engine failed while generating this response; the request was ended")
    return EngineUnavailableError(f"the engine cannot serve this request: {e}")
