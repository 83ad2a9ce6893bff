"""Fixtures of the model tests: tiny random-weight transformers models saved to disk, and the
bundled SmolLM2 GGUF loaded once per session by transformers (~25 s) and by chatforge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Small enough to run in milliseconds, big enough for GQA (4 heads / 2 KV heads), two layers,
# and dimensions that are multiples of GGUF's 32-wide quantization blocks.
TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (transformers config class name, config overrides)
TINY_VARIANTS = {
    "llama_llama3_tied": ("LlamaConfig", dict(
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    )),
    "llama_linear_untied": ("LlamaConfig", dict(
        tie_word_embeddings=False, rope_parameters={"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.0},
    )),
    "llama_biases": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "mistral_sliding": ("MistralConfig", dict(sliding_window=4)),
    "qwen2_bias_tied": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen2_mixed_window": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    # head_dim 32, not hidden / heads: q/k/v project to 128 channels.
    "qwen3_qk_norm_tied": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=True)),
    "qwen3_bias": ("Qwen3Config", dict(head_dim=16, attention_bias=True, tie_word_embeddings=False)),
    # A local layer (window 4, RoPE base 10,000) then a global one (base 1,000,000, linear scaling),
    # an attention scale that is not head_dim's, logit soft-capping.
    "gemma3_local_global": ("Gemma3TextConfig", dict(
        head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=24, final_logit_softcapping=30.0,
        rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 2.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
    )),
    # llama.cpp's Gemma 3 constants (what a GGUF file leaves out): one global layer in six, local
    # RoPE base 10,000, attention scale head_dim ** -0.5.
    "gemma3_six_layers": ("Gemma3TextConfig", dict(num_hidden_layers=6, head_dim=16, sliding_window=4,
                                                   query_pre_attn_scalar=16)),
    "mixtral_4x2": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from transformers' init (std 0.02, norms at 1, zero biases), so every term of
    the forward pass moves the logits well above the comparison tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)


def make_tiny_hf(variant: str, seed: int = 0):
    """A transformers model of the named variant with random weights, in eval mode."""
    import transformers

    config_class, overrides = TINY_VARIANTS[variant]
    config = getattr(transformers, config_class)(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


@pytest.fixture
def tiny_hf_folder(tmp_path):
    """factory(variant, max_shard_size=None) -> (folder, transformers model) saved with save_pretrained."""

    def make(variant: str, max_shard_size: str | None = None) -> tuple[Path, torch.nn.Module]:
        model = make_tiny_hf(variant)
        folder = tmp_path / variant
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(folder, **kwargs)
        return folder, model

    return make


@pytest.fixture(scope="session")
def hf_bundled_model(bundled_gguf):
    """transformers' own load of the bundled GGUF (fp32): the reference for weights and tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        bundled_gguf.parent, gguf_file=bundled_gguf.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_bundled_tokenizer(bundled_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_gguf.parent, gguf_file=bundled_gguf.name)


@pytest.fixture(scope="session")
def bundled_model(bundled_gguf):
    """(model, config) loaded by chatforge from the bundled GGUF, fp32 on the CPU."""
    from chatforge.models.loader import load_model
    from chatforge.models.source import resolve_model

    return load_model(resolve_model(str(bundled_gguf)))


def pytest_generate_tests(metafunc):
    # Any test that takes `tiny_variant` runs once per architecture variant above.
    if "tiny_variant" in metafunc.fixturenames:
        metafunc.parametrize("tiny_variant", list(TINY_VARIANTS))
