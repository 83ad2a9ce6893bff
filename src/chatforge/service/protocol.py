"""The one internal request and result model. Every dialect translates its wire body into a
`ChatRequest` and renders `ChatResult` / `ChatEvent`s back; nothing here knows a dialect.

The sampling knobs are the engine's own `SamplingParams` (re-exported here, like
`FinishReason`): a dialect fills them once, and the service only resolves `max_tokens` (None:
the rest of the context) before handing them to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams

__all__ = [
    "ChatMessage", "SamplingParams", "ModelScope", "ChatRequest", "TokenInfo", "TokenLogprobs",
    "ChoiceDelta", "ChatEvent", "Choice", "ChatResult", "Usage", "FinishReason",
]


@dataclass
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str
    name: str | None = None


@dataclass(frozen=True)
class ModelScope:
    """The models a request's product or deployment offers, from the platform's scope."""

    owner: str  # "product 10775", for the refusal's message
    models: tuple[str, ...] = ()  # ids or aliases; empty = every served model
    default: str | None = None  # run when the request names none; None = the server's default


@dataclass
class ChatRequest:
    request_id: str
    model: str | None  # as the caller named it; None: the default (of the server, product or deployment)
    messages: list[ChatMessage]
    # max_tokens None: the rest of the context (resolved by the service).
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=None))
    stream: bool = False
    # Generate nothing, only score the prompt (the completions route's `max_tokens: 0` with
    # `echo`): the engine samples one token, which the service drops.
    score_only: bool = False
    add_generation_prompt: bool = True
    # Raw prompts (the completions route): used instead of `messages`, without a chat template;
    # each a text or token ids. Choice i * n + j is completion j of prompt i.
    prompts: list[str | list[int]] | None = None
    # Keep only the last N prompt tokens (Infomaniak's `truncate`).
    truncate_prompt_tokens: int | None = None
    # Drop the oldest turns until the prompt and max_tokens fit (EGP's documented behaviour);
    # otherwise an over-long prompt is a ContextLengthExceededError.
    drop_oldest_turns: bool = False
    # A caller-supplied template (EGP), rendered in the sandbox like the model's own.
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenInfo:
    token: str  # the token's text (may be a partial UTF-8 sequence shown with replacement)
    token_id: int
    bytes: list[int]
    logprob: float


@dataclass
class TokenLogprobs:
    sampled: TokenInfo
    top: list[TokenInfo]  # best first; empty unless top_logprobs > 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float  # USD, from the model's price: computed once, here
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChoiceDelta:
    index: int
    text: str
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: FinishReason | None = None
    # On a choice's first delta when the request asked for the prompt's logprobs: one per
    # prompt token, None for the first (nothing precedes it).
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class ChatEvent:
    """One step of an answer. `usage` is the running total as of this event; the last event
    has `done` set (every choice has finished by then)."""

    deltas: list[ChoiceDelta]
    usage: Usage
    done: bool = False


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class ChatResult:
    request_id: str
    model: str
    created: int
    choices: list[Choice]
    usage: Usage
