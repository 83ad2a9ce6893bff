"""The one internal request and result model. Every dialect translates its wire body into a
`ChatRequest` and renders `ChatResult` / `ChatEvent`s back; nothing here knows a dialect."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams

__all__ = [
    "ChatMessage", "GenerationParams", "ChatRequest", "TokenInfo", "TokenLogprobs",
    "ChoiceDelta", "ChatEvent", "Choice", "ChatResult", "Usage", "FinishReason",
]


@dataclass
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str
    name: str | None = None


@dataclass
class GenerationParams:
    """Sampling knobs as the caller gave them; `max_tokens` None means the rest of the context."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        fields = dataclasses.asdict(self)
        fields["max_tokens"] = max_tokens
        fields["min_tokens"] = min(self.min_tokens, max_tokens)
        return SamplingParams(**fields)


@dataclass
class ChatRequest:
    request_id: str
    model: str | None  # None: the default model (of the server, product or deployment)
    messages: list[ChatMessage]
    params: GenerationParams = field(default_factory=GenerationParams)
    add_generation_prompt: bool = True
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


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float  # USD
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


@dataclass
class ChatEvent:
    """One step of a streamed answer. The last event carries `usage` (and every choice has
    finished by then)."""

    deltas: list[ChoiceDelta]
    usage: Usage | None = None


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class ChatResult:
    request_id: str
    model: str
    created: int
    prompt: str  # the rendered prompt (EGP returns it); never logged
    choices: list[Choice]
    usage: Usage
