"""Per-request sampling parameters: the engine's whole contract with the outside world.

Every field is honoured per row inside one batch (the sampler turns them into per-row tensors).
The order in which they act is documented and owned by `engine/sampler.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatforge.engine.grammar import Grammar

MAX_TOP_LOGPROBS = 20
# Temperatures below this sample as greedy: logits / 1e-300 overflow to inf, and softmax of
# inf - inf is NaN. The argmax is what such a temperature means anyway.
GREEDY_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0  # over prompt + generated tokens; 1 = off
    presence_penalty: float = 0.0  # OpenAI formula, over generated tokens
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to the logit
    seed: int | None = None  # a per-request generator when set
    max_tokens: int | None = 16  # generated tokens at most; None: until the context is full
    min_tokens: int = 0  # EOS and stop ids are banned until this many were generated
    stop: list[str] = field(default_factory=list)  # matched on text by the detokenizer, not here
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False  # return the sampled token's raw logprob
    top_logprobs: int = 0  # and this many most likely alternatives (0..20)
    n: int = 1  # completions forked from one prompt, sharing its KV blocks
    # Score the prompt too: each prompt token's logprob given the ones before it, with this many
    # alternatives (0..20); None = off. Such a request skips the prefix cache (prompt_logprobs.py).
    prompt_logprobs: int | None = None
    grammar: Grammar | None = None  # constrained decoding (engine/grammar.py), compiled by the service

    def __post_init__(self) -> None:
        # Programming errors only: dialects validate user input and answer in their envelope.
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.temperature < GREEDY_TEMPERATURE:
            self.temperature = 0.0
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if not 0 < self.typical_p <= 1:
            raise ValueError("typical_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise ValueError("min_tokens must be in [0, max_tokens]")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
