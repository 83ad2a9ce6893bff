"""What the engine hands back per request and step: token ids, never text."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    STOP = "stop"  # EOS, an end-of-turn id, or one of stop_token_ids
    STOP_SEQUENCE = "stop_sequence"  # a stop string, found by the text layer
    LENGTH = "length"  # max_tokens, or the model's context
    ABORT = "abort"  # the client went away, or the server is shutting down
    GRAMMAR_ERROR = "grammar_error"  # the grammar could not take the sampled token (engine/grammar.py)
    TOOL_CALLS = "tool_calls"  # never the engine's: the service's name for a STOP after tool calls


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float  # raw log-softmax of the model's logits, before any processing
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass
class CompletionOutput:
    """One of the request's n completions, as of this step."""

    index: int
    new_token_ids: list[int]  # generated since the previous output of this completion
    new_logprobs: list[TokenLogprob] | None  # one per new token when logprobs were asked for
    num_generated: int  # generated so far in total
    finish_reason: FinishReason | None = None  # set once, on the completion's last output
    stop_token_id: int | None = None  # the id that ended it with STOP (not part of the text)
    error: str | None = None  # the grammar's message when finish_reason is GRAMMAR_ERROR


@dataclass
class RequestOutput:
    request_id: str
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache
    outputs: list[CompletionOutput]  # only completions with something new this step
    finished: bool  # every completion of the request has finished
    # Once, on the request's first output, when SamplingParams.prompt_logprobs asked for them:
    # one per prompt token, None for the first (nothing precedes it).
    prompt_logprobs: list[TokenLogprob | None] | None = None
