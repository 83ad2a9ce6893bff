"""ModelConfig from config.json (both RoPE spellings) and GGUF metadata, and its refusals."""

from __future__ import annotations

import pytest

from chatforge.models.config import ModelConfig
from chatforge.models.errors import ModelConfigError, UnsupportedArchitectureError

BASE = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
}


def test_legacy_llama3_spelling():
    """transformers 4 files: rope_theta and rope_scaling at the top level, "type" or "rope_type"."""
    cfg = ModelConfig.from_hf_dict({
        **BASE, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    })
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    legacy_linear = ModelConfig.from_hf_dict({**BASE, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert legacy_linear.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert legacy_linear.rope_theta == 10000.0


def test_transformers5_spelling_and_defaults():
    cfg = ModelConfig.from_hf_dict({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert (cfg.rope_theta, cfg.rope_scaling) == (1e6, None)
    assert cfg.head_dim == 16 and cfg.tie_word_embeddings is False
    assert (cfg.attention_bias, cfg.o_proj_bias, cfg.mlp_bias, cfg.sliding_window) == (False, False, False, None)


def test_eos_ids_merged_from_both_files():
    cfg = ModelConfig.from_hf_dict({**BASE, "eos_token_id": [128001, 128008]},
                                   {"bos_token_id": 128000, "eos_token_id": [128001, 128009]})
    assert cfg.eos_token_ids == [128001, 128008, 128009]
    assert cfg.bos_token_id == 128000


def test_architecture_from_model_type_when_absent():
    cfg = ModelConfig.from_hf_dict({**{k: v for k, v in BASE.items() if k != "architectures"}, "model_type": "mistral",
                                    "sliding_window": 4096})
    assert cfg.architecture == "MistralForCausalLM" and cfg.sliding_window == 4096


def test_qwen2_window_only_when_enabled():
    qwen = {**BASE, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 4096, "use_sliding_window": False}
    cfg = ModelConfig.from_hf_dict(qwen)
    assert cfg.sliding_window is None and cfg.attention_bias and not cfg.o_proj_bias
    assert [cfg.layer_sliding_window(i) for i in range(2)] == [None, None]


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"architectures": None, "model_type": "gpt2"}, UnsupportedArchitectureError, "model_type 'gpt2' is unknown"),
        ({"hidden_act": "gelu"}, ModelConfigError, "hidden_act 'gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, ModelConfigError, "unsupported rope scaling 'yarn'"),
        ({"num_key_value_heads": 3}, ModelConfigError, r"num_attention_heads \(4\) is not a multiple"),
        ({"vocab_size": None}, ModelConfigError, "config.json has no 'vocab_size'"),
        ({"intermediate_size": -5}, ModelConfigError, "intermediate_size must be a positive integer"),
    ],
)
def test_bad_config_json(change, error, match):
    with pytest.raises(error, match=match):
        ModelConfig.from_hf_dict({**BASE, **change})


GGUF = {
    "general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 4096,
    "llama.embedding_length": 64, "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2, "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.rope.freq_base": 500000.0, "tokenizer.ggml.tokens": ["a"] * 100,
    "tokenizer.ggml.bos_token_id": 7, "tokenizer.ggml.eos_token_id": 8, "tokenizer.ggml.eot_token_id": 9,
}


def test_gguf_metadata():
    cfg = ModelConfig.from_gguf_metadata(GGUF, ["token_embd.weight", "output.weight"])
    assert (cfg.vocab_size, cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta) == (100, 16, 4096, 500000.0)
    assert cfg.tie_word_embeddings is False  # an output.weight tensor means untied
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (7, [8, 9])
    tied = ModelConfig.from_gguf_metadata(GGUF, ["token_embd.weight"])
    assert tied.tie_word_embeddings is True


def test_gguf_rope_scaling_and_errors():
    linear = ModelConfig.from_gguf_metadata({**GGUF, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    with pytest.raises(ModelConfigError, match="unsupported GGUF rope scaling 'yarn'"):
        ModelConfig.from_gguf_metadata({**GGUF, "llama.rope.scaling.type": "yarn"})
    missing = {k: v for k, v in GGUF.items() if k != "llama.block_count"}
    with pytest.raises(ModelConfigError, match="GGUF metadata has no 'llama.block_count'"):
        ModelConfig.from_gguf_metadata(missing)
