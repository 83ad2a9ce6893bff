"""`ModelConfig`: the one description of a decoder that the model, the loader and the engine share.

Built once at load time from either a Hugging Face folder (`hf_config.py`: `config.json` +
`generation_config.json`) or a GGUF file's metadata (`gguf_config.py`), and validated here, so
the model code never looks at raw dicts. One dataclass serves every family: the fields past the
Llama core say what a family adds (QK-norm, Gemma's activation and attention scale, per-layer
RoPE bases, experts), each with the default that means "not used".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from chatforge.models.errors import ModelConfigError

# The RoPE variants the model implements; "freq_factors" is GGUF's form of llama3 scaling
# (a `rope_freqs` tensor of per-frequency divisors, filled in by the loader).
ROPE_TYPES = ("linear", "llama3", "freq_factors")
# The MLP's gate activation: SwiGLU (silu) for the Llama family, GeGLU (gelu, tanh form) for Gemma.
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # e.g. "LlamaForCausalLM"; the registry maps it to a class
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # of the dense MLP, or of each expert
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # < num_attention_heads means grouped-query attention
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # None, or {"rope_type": one of ROPE_TYPES, ...its parameters}
    max_position_embeddings: int
    tie_word_embeddings: bool  # lm_head reuses embed_tokens.weight
    attention_bias: bool  # bias on q/k/v projections (Qwen2 always)
    sliding_window: int | None  # a query sees keys with q_pos - k_pos < sliding_window (Mistral)
    bos_token_id: int | None
    eos_token_ids: list[int]  # every id that ends a turn, config.json and generation_config.json merged
    o_proj_bias: bool = False  # Llama's attention_bias also puts a bias on o_proj; Qwen2's does not
    mlp_bias: bool = False
    # Per layer "full_attention" | "sliding_attention" (Qwen2, Gemma 3); None = every layer uses sliding_window.
    layer_types: tuple[str, ...] | None = None
    hidden_act: str = "silu"  # one of ACTIVATIONS
    qk_norm: bool = False  # RMSNorm over each head's query and key before RoPE (Qwen3, Gemma 3)
    # Softmax scale = query_pre_attn_scalar ** -0.5 (Gemma 3); None = head_dim ** -0.5.
    query_pre_attn_scalar: float | None = None
    # RoPE base of the sliding-window layers when it differs from the others' (Gemma 3: 10,000 vs
    # 1,000,000); those layers take no rope_scaling. None = every layer uses rope_theta.
    rope_local_theta: float | None = None
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap) (Gemma)
    num_experts: int = 0  # experts per layer (Mixtral); 0 = a dense MLP
    num_experts_per_tok: int = 0  # experts each token is routed to (top-k)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") not in ROPE_TYPES:
            raise ModelConfigError(
                f"unsupported rope scaling {self.rope_scaling.get('rope_type')!r}; supported: {', '.join(ROPE_TYPES)}"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelConfigError(f"sliding_window must be positive, got {self.sliding_window}")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ModelConfigError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ModelConfigError(f"hidden_act {self.hidden_act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        if self.num_experts < 0 or (self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts):
            raise ModelConfigError(
                f"need 1 <= num_experts_per_tok <= num_experts, got {self.num_experts_per_tok} of {self.num_experts}"
            )
        for name in ("query_pre_attn_scalar", "final_logit_softcapping", "rope_local_theta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ModelConfigError(f"{name} must be positive, got {value!r}")

    def layer_sliding_window(self, layer: int) -> int | None:
        """The sliding window layer `layer` attends with, or None for full causal attention."""
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def attention_scale(self) -> float:
        """The factor on q.k before the softmax."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    # -- builders (one module per source format) ----------------------------------------------
    @classmethod
    def from_hf_dict(
        cls, config_json: Mapping[str, Any], generation_config_json: Mapping[str, Any] | None = None
    ) -> ModelConfig:
        """From the parsed `config.json` and (optionally) `generation_config.json` of an HF folder."""
        from chatforge.models.hf_config import config_from_hf

        return config_from_hf(config_json, generation_config_json)

    @classmethod
    def from_gguf_metadata(
        cls, metadata: Mapping[str, Any], tensor_names: Collection[str] | None = None
    ) -> ModelConfig:
        """From a GGUF file's metadata. GGUF has no tie flag: embeddings are tied exactly when the
        file has no `output.weight`, so pass `tensor_names` to decide; without it they count as tied.
        A `rope_freqs` tensor (llama3-style scaling) is read by the loader, not here."""
        from chatforge.models.gguf_config import config_from_gguf

        return config_from_gguf(metadata, tensor_names)


def merge_ids(*values: int | list[int] | None) -> list[int]:
    """Flatten ints and lists of ints into one list, first occurrence kept, None skipped."""
    out: list[int] = []
    for value in values:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in out:
                out.append(int(v))
    return out
