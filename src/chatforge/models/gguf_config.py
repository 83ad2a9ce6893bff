"""`ModelConfig` from a GGUF file's metadata (`{arch}.*` keys, as llama.cpp's converter writes them).

llama.cpp files some families under another's name: Mistral and Mixtral are "llama" (Mixtral
told apart by `llama.expert_count`). Where llama.cpp hard-codes a hyperparameter instead of
storing it (Gemma 3's RoPE base of the local layers, its 5:1 local/global pattern, its attention
scale), the same constant is used here, so a file means what it means to llama.cpp.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from chatforge.models.config import ModelConfig, merge_ids
from chatforge.models.errors import ModelConfigError, UnsupportedArchitectureError

# GGUF `general.architecture` -> architecture name ("llama" becomes Mixtral when it has experts).
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
# llama.cpp's Gemma 3 constants (not in the file): RoPE base of the sliding-window layers, and
# one global layer after every five local ones.
_GEMMA3_LOCAL_THETA = 10000.0
_GEMMA3_PATTERN = 6
_GEMMA3_27B_LAYERS = 62  # the one size whose attention scale is hidden / heads, not head_dim


def config_from_gguf(metadata: Mapping[str, Any], tensor_names: Collection[str] | None = None) -> ModelConfig:
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}"
        )

    def key(name: str, default: Any = ...) -> Any:
        full = f"{arch}.{name}"
        if full in metadata:
            return metadata[full]
        if default is ...:
            raise ModelConfigError(f"GGUF metadata has no {full!r}")
        return default

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    layers = int(key("block_count"))
    head_dim = int(key("attention.key_length", hidden // heads))
    vocab = key("vocab_size", None)
    if vocab is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ModelConfigError(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
        vocab = len(tokens)
    names = set(tensor_names) if tensor_names is not None else None
    gemma = arch == "gemma3"
    experts = int(key("expert_count", 0)) if arch == "llama" else 0
    window = key("attention.sliding_window", None)
    eos = [metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    qkv_bias = arch == "qwen2" if names is None else "blk.0.attn_q.bias" in names
    return ModelConfig(
        architecture="MixtralForCausalLM" if experts else GGUF_ARCHITECTURES[arch],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6 if gemma else 1e-5)),
        rope_theta=float(key("rope.freq_base", 1_000_000.0 if gemma else 10000.0)),
        rope_scaling=_rope_scaling(key("rope.scaling.type", None), key("rope.scaling.factor", None)),
        max_position_embeddings=int(key("context_length")),
        tie_word_embeddings=True if names is None else "output.weight" not in names,
        attention_bias=qkv_bias,
        o_proj_bias=names is not None and "blk.0.attn_output.bias" in names,
        mlp_bias=names is not None and "blk.0.ffn_up.bias" in names,
        sliding_window=int(window) if window else None,
        layer_types=_gemma_layer_types(key("attention.sliding_window_pattern", None), layers) if gemma else None,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=merge_ids(*eos),
        hidden_act="gelu_pytorch_tanh" if gemma else "silu",
        qk_norm=arch in ("qwen3", "gemma3"),
        query_pre_attn_scalar=_gemma_query_scalar(hidden, heads, head_dim, layers) if gemma else None,
        rope_local_theta=float(key("rope.freq_base_swa", _GEMMA3_LOCAL_THETA)) if gemma else None,
        final_logit_softcapping=key("final_logit_softcapping", None) if gemma else None,
        num_experts=experts,
        num_experts_per_tok=int(key("expert_used_count", 2)) if experts else 0,
    )


def _rope_scaling(kind: str | None, factor: float | None) -> dict[str, Any] | None:
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    raise ModelConfigError(f"unsupported GGUF rope scaling {kind!r}; supported: none, linear")


def _gemma_layer_types(pattern: int | list | None, layers: int) -> tuple[str, ...]:
    """Per-layer attention kind: from a stored per-layer flag list (True = sliding), or every
    `pattern`-th layer global (llama.cpp's default of 6 when the file says nothing)."""
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise ModelConfigError(f"sliding_window_pattern has {len(pattern)} entries for {layers} layers")
        return tuple("sliding_attention" if p else "full_attention" for p in pattern)
    every = int(pattern or _GEMMA3_PATTERN)
    return tuple("full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers))


def _gemma_query_scalar(hidden: int, heads: int, head_dim: int, layers: int) -> float:
    # As llama.cpp (after Gemma's reference code): the 27B model scales by its hidden size per head.
    return float(hidden // heads if layers == _GEMMA3_27B_LAYERS else head_dim)
