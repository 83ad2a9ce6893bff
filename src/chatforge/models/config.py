"""`ModelConfig`: the one description of a decoder that the model, the loader and the engine share.

Built once at load time from either a Hugging Face folder (`config.json` + `generation_config.json`)
or a GGUF file's metadata, and validated there, so the model code never looks at raw dicts.
Both `config.json` spellings are accepted: transformers 5 nests the RoPE settings in
`rope_parameters` (with `rope_theta` inside); older files carry `rope_theta` and `rope_scaling`
at the top level.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from chatforge.models.errors import ModelConfigError, UnsupportedArchitectureError

# HF `model_type` -> architecture name, for config.json files that lack `architectures`.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
# GGUF `general.architecture` -> architecture name. llama.cpp writes Mistral models as "llama".
_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# The RoPE variants the model implements; "freq_factors" is GGUF's form of llama3 scaling
# (a `rope_freqs` tensor of per-frequency divisors, filled in by the loader).
ROPE_TYPES = ("linear", "llama3", "freq_factors")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # e.g. "LlamaForCausalLM"; the registry maps it to a class
    vocab_size: int
    hidden_size: int
    intermediate_size: int
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
    # Per layer "full_attention" | "sliding_attention" (Qwen2); None = every layer uses sliding_window.
    layer_types: tuple[str, ...] | None = None

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

    def layer_sliding_window(self, layer: int) -> int | None:
        """The sliding window layer `layer` attends with, or None for full causal attention."""
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    # -- builders -----------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(
        cls, config_json: Mapping[str, Any], generation_config_json: Mapping[str, Any] | None = None
    ) -> ModelConfig:
        """From the parsed `config.json` and (optionally) `generation_config.json` of an HF folder."""
        c = dict(config_json)
        gen = dict(generation_config_json or {})
        architecture = _hf_architecture(c)
        act = c.get("hidden_act", "silu")
        if act != "silu":
            raise ModelConfigError(f"hidden_act {act!r} is not supported (only silu)")
        heads = _require(c, "num_attention_heads")
        hidden = _require(c, "hidden_size")
        theta, scaling = _hf_rope(c)
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        is_llama = architecture == "LlamaForCausalLM"
        if is_qwen2:
            window = c.get("sliding_window") if c.get("use_sliding_window", False) else None
        elif architecture == "MistralForCausalLM":
            window = c.get("sliding_window")
        else:
            window = None
        layer_types = c.get("layer_types") if window is not None else None
        attention_bias = True if is_qwen2 else bool(c.get("attention_bias", False)) and is_llama
        return cls(
            architecture=architecture,
            vocab_size=_require(c, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_require(c, "intermediate_size"),
            num_hidden_layers=_require(c, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or hidden // heads,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=_require(c, "max_position_embeddings"),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            o_proj_bias=attention_bias and is_llama,
            mlp_bias=bool(c.get("mlp_bias", False)) and is_llama,
            sliding_window=window,
            layer_types=tuple(layer_types) if layer_types is not None else None,
            bos_token_id=gen.get("bos_token_id", c.get("bos_token_id")),
            eos_token_ids=_merge_ids(c.get("eos_token_id"), gen.get("eos_token_id")),
        )

    @classmethod
    def from_gguf_metadata(
        cls, metadata: Mapping[str, Any], tensor_names: Collection[str] | None = None
    ) -> ModelConfig:
        """From a GGUF file's metadata. GGUF has no tie flag: embeddings are tied exactly when the
        file has no `output.weight`, so pass `tensor_names` to decide; without it they count as tied.
        A `rope_freqs` tensor (llama3-style scaling) is read by the loader, not here."""
        arch = metadata.get("general.architecture")
        if arch not in _GGUF_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"GGUF architecture {arch!r} is not supported; supported: {', '.join(sorted(_GGUF_ARCHITECTURES))}"
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
        vocab = key("vocab_size", None)
        if vocab is None:
            tokens = metadata.get("tokenizer.ggml.tokens")
            if tokens is None:
                raise ModelConfigError(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
            vocab = len(tokens)
        is_qwen2 = arch == "qwen2"
        eos = [metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        tied = True if tensor_names is None else "output.weight" not in tensor_names
        return cls(
            architecture=_GGUF_ARCHITECTURES[arch],
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(key("feed_forward_length")),
            num_hidden_layers=int(key("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(key("attention.head_count_kv", heads)),
            head_dim=int(key("attention.key_length", hidden // heads)),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rope_scaling=_gguf_rope_scaling(key("rope.scaling.type", None), key("rope.scaling.factor", None)),
            max_position_embeddings=int(key("context_length")),
            tie_word_embeddings=tied,
            attention_bias=is_qwen2,
            sliding_window=key("attention.sliding_window", None),
            bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=_merge_ids(*eos),
        )


def _require(c: Mapping[str, Any], name: str) -> Any:
    if c.get(name) is None:
        raise ModelConfigError(f"config.json has no {name!r}")
    return c[name]


def _hf_architecture(c: Mapping[str, Any]) -> str:
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


def _hf_rope(c: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
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


def _gguf_rope_scaling(kind: str | None, factor: float | None) -> dict[str, Any] | None:
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    raise ModelConfigError(f"unsupported GGUF rope scaling {kind!r}; supported: none, linear")


def _merge_ids(*values: int | list[int] | None) -> list[int]:
    """Flatten ints and lists of ints into one list, first occurrence kept, None skipped."""
    out: list[int] = []
    for value in values:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in out:
                out.append(int(v))
    return out
