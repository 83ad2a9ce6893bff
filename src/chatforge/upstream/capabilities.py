"""Which sampling fields each kind of upstream honours. A request that sets any other field (to
anything but its default) cannot run there: it goes to an upstream that honours it, or is refused
with a 400 naming the field. A field is never silently dropped.

Stop strings are honoured everywhere: the gateway matches them on the text itself and closes the
upstream's stream. `max_tokens` is always sent.
"""

from __future__ import annotations

import dataclasses

from chatforge.engine.sampling_params import SamplingParams

_ALL = frozenset(f.name for f in dataclasses.fields(SamplingParams))

# OpenAI's own /v1/completions fields (what any OpenAI-compatible engine takes).
_OPENAI = frozenset({
    "temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "max_tokens", "stop",
    "logprobs", "top_logprobs", "n",
})

HONOURED: dict[str, frozenset[str]] = {
    "chatforge": _ALL,
    # vLLM's sampling extensions (its SamplingParams); it has no typical_p.
    "vllm": _OPENAI | {"top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos"},
    # llama.cpp's server (tools/server): its samplers, one completion per request, no stop ids.
    "llamacpp": (_OPENAI - {"n"}) | {"top_k", "min_p", "typical_p", "repetition_penalty", "ignore_eos"},
    "openai": _OPENAI,
    # A router forwards the body to engines chatforge cannot see: only OpenAI's fields are sure.
    "router": _OPENAI,
}

# What the caller knows a field as, when the dialects name it otherwise.
_CALLER_NAMES = {"grammar": "response_format (or a required tool call)", "prompt_logprobs": "prompt_logprobs (echo with logprobs)"}

_DEFAULTS = SamplingParams()


def unhonoured(kind: str, params: SamplingParams) -> str | None:
    """The first field `params` sets that an upstream of `kind` does not honour, else None."""
    allowed = HONOURED[kind]
    for name in sorted(_ALL - allowed):
        if getattr(params, name) != getattr(_DEFAULTS, name):
            return name
    return None


def refusal_message(field: str, kinds: list[str]) -> str:
    shown = _CALLER_NAMES.get(field, field)
    return (f"`{shown}` cannot be honoured by the engines serving this model ({', '.join(sorted(set(kinds)))}); "
            "leave it out or use a model served by chatforge nodes")
