"""Architecture name (config.json's `architectures[0]`) -> the class that implements it."""

from __future__ import annotations

from torch import nn

from chatforge.models.errors import UnsupportedArchitectureError
from chatforge.models.gemma3 import Gemma3ForCausalLM
from chatforge.models.llama import LlamaForCausalLM

# The Llama family differs only in configuration (models/llama.py); Gemma 3 has its own decoder.
_ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": LlamaForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def model_class(architecture: str) -> type[nn.Module]:
    try:
        return _ARCHITECTURES[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported; supported: {', '.join(supported_architectures())}"
        ) from None
