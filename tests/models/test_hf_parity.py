"""Tiny random-weight models of every supported family, saved by transformers, loaded by
chatforge: the logits of a flat batch of prompts equal transformers' logits per prompt."""

from __future__ import annotations

import json

import pytest
import torch

from chatforge.models.attention import AttentionMetadata
from chatforge.models.loader import load_model
from chatforge.models.source import resolve_model

PROMPT_LENS = (3, 9, 14)  # longer than every sliding window in the variants


def prompts(vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


def our_logits(model, batch: list[list[int]]) -> list[torch.Tensor]:
    """One forward over the flat batch without a cache; logits of every position, per prompt."""
    lens = [len(p) for p in batch]
    meta = AttentionMetadata.build(lens, lens, None, block_size=16)
    ids = torch.tensor([t for p in batch for t in p])
    with torch.inference_mode():
        logits = model.compute_logits(model(ids, meta.positions, meta, None))
    return list(logits.split(lens))


def hf_logits(model, batch: list[list[int]]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([p])).logits[0] for p in batch]


def assert_parity(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4


def test_logits_equal_transformers(tiny_hf_folder, tiny_variant):
    folder, hf = tiny_hf_folder(tiny_variant)
    model, config = load_model(resolve_model(str(folder)))
    batch = prompts(config.vocab_size)
    theirs = hf_logits(hf, batch)
    assert_parity(our_logits(model, batch), theirs)
    # The comparison is meaningful: logits vary well beyond the tolerance.
    assert min(t.std().item() for t in theirs) > 0.1


def test_sharded_checkpoint_loads(tiny_hf_folder):
    folder, hf = tiny_hf_folder("llama_linear_untied", max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    assert not (folder / "model.safetensors").exists()
    model, config = load_model(resolve_model(str(folder)))
    batch = prompts(config.vocab_size)
    assert_parity(our_logits(model, batch), hf_logits(hf, batch))


def test_rope_frequencies_equal_transformers(tiny_hf_folder):
    folder, hf = tiny_hf_folder("llama_llama3_tied")
    model, config = load_model(resolve_model(str(folder)))
    ours = model.model.rotary_emb.inv_freq
    assert torch.equal(ours, hf.model.rotary_emb.inv_freq)
    plain = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
    assert not torch.allclose(ours, plain)  # llama3 scaling really changed some frequencies


def test_sliding_window_changes_the_result(tiny_hf_folder):
    """Guard against a window that is silently ignored: without it the logits differ."""
    folder, _ = tiny_hf_folder("mistral_sliding")
    model, config = load_model(resolve_model(str(folder)))
    assert config.sliding_window == 4
    batch = prompts(config.vocab_size)
    windowed = our_logits(model, batch)
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
    full = our_logits(model, batch)
    assert torch.equal(windowed[0], full[0])  # 3 tokens: inside the window
    assert (windowed[2] - full[2]).abs().max().item() > 1e-2


def test_config_read_from_saved_folder(tiny_hf_folder):
    folder, _ = tiny_hf_folder("qwen2_mixed_window")
    _, config = load_model(resolve_model(str(folder)))
    assert config.architecture == "Qwen2ForCausalLM"
    assert config.attention_bias and not config.o_proj_bias
    assert config.tie_word_embeddings is False
    assert [config.layer_sliding_window(i) for i in range(2)] == [None, 3]
