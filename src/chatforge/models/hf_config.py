"""`ModelConfig` from a Hugging Face folder's `config.json` (and `generation_config.json`).

Both `config.json` spellings are accepted: transformers 5 nests the RoPE settings in
`rope_parameters` (with `rope_theta` inside; per layer type for Gemma 3); older files carry
`rope_theta`, `rope_scaling` (and Gemma's `rope_local_base_freq`) at the top level. What each
family adds to the Llama core is decided here, from the architecture name, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatforge.models.config import ModelConfig, merge_ids
from chatforge.models.errors import ModelConfigError, UnsupportedArchitectureError

# HF `model_type` -> architecture name, for config.json files that lack `architectures`.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
_GEMMA3 = "Gemma3ForCausalLM"
_QWEN = ("Qwen2ForCausalLM", "Qwen3ForCausalLM")
# Gemma 3 configs without `layer_types`: every sixth layer attends globally, the others locally.
_GEMMA3_PATTERN = 6


def config_from_hf(config_json: Mapping[str, Any], generation_config_json: Mapping[str, Any] | None = None) -> ModelConfig:
    c = dict(config_json)
    gen = dict(generation_config_json or {})
    arch = _architecture(c)
    gemma = arch == _GEMMA3
    heads = _require(c, "num_attention_heads")
    hidden = _require(c, "hidden_size")
    layers = _require(c, "num_hidden_layers")
    act = c.get("hidden_activation") or c.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
    wanted = "gelu_pytorch_tanh" if gemma else "silu"
    if act != wanted:
        raise ModelConfigError(f"hidden_act {act!r} is not supported for {arch} (supported: {wanted})")
    theta, scaling, local_theta = _gemma_rope(c) if gemma else (*_rope(c), None)
    window = _sliding_window(c, arch)
    layer_types = _layer_types(c, layers) if gemma else c.get("layer_types") if window is not None else None
    # Qwen2: bias on q/k/v only. Llama, Qwen3, Gemma 3: `attention_bias` puts one on q/k/v/o.
    qkv_bias = arch == "Qwen2ForCausalLM" or (bool(c.get("attention_bias", False)) and arch in (
        "LlamaForCausalLM", "Qwen3ForCausalLM", _GEMMA3))
    # NOTE: Gemma 3's `attn_logit_softcapping` is not read: transformers and llama.cpp both leave
    # Gemma 3's attention logits uncapped (released checkpoints set it to null); only Gemma 2 caps them.
    return ModelConfig(
        architecture=arch,
        vocab_size=_require(c, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_require(c, "intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or hidden // heads,
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=_require(c, "max_position_embeddings"),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", gemma)),
        attention_bias=qkv_bias,
        o_proj_bias=qkv_bias and arch != "Qwen2ForCausalLM",
        mlp_bias=bool(c.get("mlp_bias", False)) and arch == "LlamaForCausalLM",
        sliding_window=window,
        layer_types=tuple(layer_types) if layer_types is not None else None,
        bos_token_id=gen.get("bos_token_id", c.get("bos_token_id")),
        eos_token_ids=merge_ids(c.get("eos_token_id"), gen.get("eos_token_id")),
        hidden_act=act,
        qk_norm=gemma or arch == "Qwen3ForCausalLM",
        query_pre_attn_scalar=float(c.get("query_pre_attn_scalar") or 256) if gemma else None,
        rope_local_theta=local_theta,
        final_logit_softcapping=c.get("final_logit_softcapping") if gemma else None,
        num_experts=int(c.get("num_local_experts", 8)) if arch == "MixtralForCausalLM" else 0,
        num_experts_per_tok=int(c.get("num_experts_per_tok", 2)) if arch == "MixtralForCausalLM" else 0,
    )


def _require(c: Mapping[str, Any], name: str) -> Any:
    if c.get(name) is None:
        raise ModelConfigError(f"config.json has no {name!r}")
    return c[name]


def _architecture(c: Mapping[str, Any]) -> str:
    architectures = c.get("architectures") or []
    if architectures:
        return architectures[0]
    model_type = c.get("model_type")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise UnsupportedArchitectureError(
        f"config.json names no architecture and model_type {model_type!r} is unknown; "
        f"supported model types: {', '.join(sorted(_MODEL_TYPES))}"
    )


def _sliding_window(c: Mapping[str, Any], arch: str) -> int | None:
    if arch in _QWEN:
        return c.get("sliding_window") if c.get("use_sliding_window", False) else None
    if arch in ("MistralForCausalLM", "MixtralForCausalLM", _GEMMA3):
        return c.get("sliding_window")
    return None


def _layer_types(c: Mapping[str, Any], layers: int) -> list[str]:
    if c.get("layer_types"):
        return list(c["layer_types"])
    pattern = int(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or _GEMMA3_PATTERN)
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]


def _gemma_rope(c: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(global theta, global scaling, local theta): global layers take the scaling, local ones none."""
    params = c.get("rope_parameters") or {}
    if "full_attention" in params:  # transformers 5: one RoPE setting per layer type
        theta, scaling = _rope({"rope_parameters": params["full_attention"]})
        local_theta, local_scaling = _rope({"rope_parameters": params.get("sliding_attention") or {"rope_theta": 10000.0}})
        if local_scaling is not None:
            raise ModelConfigError("RoPE scaling on Gemma 3's sliding-window layers is not supported")
        return theta, scaling, local_theta
    theta, scaling = _rope({**c, "rope_theta": c.get("rope_theta", 1_000_000.0)})
    return theta, scaling, float(c.get("rope_local_base_freq", 10000.0))


def _rope(c: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either config.json spelling."""
    params = dict(c.get("rope_parameters") or {})
    legacy = dict(c.get("rope_scaling") or {})
    theta = params.get("rope_theta", c.get("rope_theta", 10000.0))
    merged = {**legacy, **params}
    rope_type = merged.pop("rope_type", merged.pop("type", "default"))
    merged.pop("type", None)
    merged.pop("rope_theta", None)
    if rope_type == "default":
        return float(theta), None
    if rope_type == "linear":
        return float(theta), {"rope_type": "linear", "factor": float(merged["factor"])}
    if rope_type == "llama3":
        original = merged.get("original_max_position_embeddings", c.get("max_position_embeddings"))
        return float(theta), {
            "rope_type": "llama3",
            "factor": float(merged["factor"]),
            "low_freq_factor": float(merged["low_freq_factor"]),
            "high_freq_factor": float(merged["high_freq_factor"]),
            "original_max_position_embeddings": int(original),
        }
    raise ModelConfigError(f"unsupported rope scaling {rope_type!r}; supported: default, linear, llama3")
