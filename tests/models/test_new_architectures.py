"""Qwen3, Gemma 3 and Mixtral beyond one forward pass: greedy decoding over the paged KV cache
equals transformers' `generate` token for token, Mixtral's checkpoint layouts load to the same
model, and Gemma 3's config and float32-only contract."""

from __future__ import annotations

import pytest
import torch

from chatforge.models.config import ModelConfig
from chatforge.models.errors import ModelError, WeightsMismatchError
from chatforge.models.generate import greedy_generate
from chatforge.models.loader import build_model, load_model
from chatforge.models.source import resolve_model

from .test_hf_parity import hf_logits, our_logits, prompts

# Longer than the tiny sliding windows (4), so decoding slides past old keys.
PROMPTS = ([5, 17, 3, 88, 41, 9, 60, 2, 33], [70, 8, 19, 4, 52, 95, 23], [1, 44, 61, 12, 90, 27, 36, 74, 15, 58])


@pytest.mark.parametrize("variant", ["qwen3_qk_norm_tied", "gemma3_local_global", "gemma3_six_layers", "mixtral_4x2"])
def test_greedy_generation_equals_transformers(tiny_hf_folder, variant):
    folder, hf = tiny_hf_folder(variant)
    model, _ = load_model(resolve_model(str(folder)))
    generated = set()
    for prompt in PROMPTS:
        ours = greedy_generate(model, prompt, 12, eos_token_ids=())
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert ours == out[0, len(prompt):].tolist()
        generated.update(ours)
    # Random tiny models fall into loops; across prompts they still produce varied tokens.
    assert len(generated) > 4


def test_mixtral_routes_each_token_to_its_top_two_experts(tiny_hf_folder):
    """The batched dispatch gives each token what its two experts alone would: checked against a
    per-token loop over the chosen experts, written out here."""
    folder, _ = tiny_hf_folder("mixtral_4x2")
    model, _ = load_model(resolve_model(str(folder)))
    moe = model.model.layers[0].mlp
    x = torch.randn(11, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        batched = moe(x)
        probs = torch.softmax(moe.gate(x), dim=-1)
        for t in range(x.shape[0]):
            top = torch.topk(probs[t], 2)
            expected = sum(w / top.values.sum() * moe.experts.run(int(e), x[t : t + 1])[0]
                           for w, e in zip(top.values, top.indices))
            torch.testing.assert_close(batched[t], expected, rtol=1e-5, atol=1e-5)
        # All four experts are used by some token, so every matmul of the dispatch ran.
        assert len(set(torch.topk(probs, 2).indices.flatten().tolist())) == 4


def test_mixtral_checkpoint_layouts_load_alike(tiny_hf_folder):
    """transformers saves per-expert w1/w2/w3 tensors (under block_sparse_moe) but holds fused
    gate_up_proj tensors in memory: both load to the same weights."""
    folder, hf = tiny_hf_folder("mixtral_4x2")
    saved, config = load_model(resolve_model(str(folder)))
    in_memory = build_model(config, dict(hf.state_dict()), torch.float32, "cpu")
    ours = saved.state_dict()
    assert ours.keys() == in_memory.state_dict().keys()
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    assert ours["model.layers.0.mlp.experts.gate_proj"].shape == (4, 96, 64)
    assert ours["model.layers.0.mlp.experts.down_proj"].shape == (4, 64, 96)
    batch = prompts(config.vocab_size)
    for a, b in zip(our_logits(in_memory, batch), hf_logits(hf, batch)):
        assert (a - b).abs().max().item() <= 1e-4


def test_mixtral_missing_expert_is_named(tiny_hf_folder):
    folder, hf = tiny_hf_folder("mixtral_4x2")
    _, config = load_model(resolve_model(str(folder)))
    state = {k: v for k, v in _legacy_state(hf).items() if k != "model.layers.1.block_sparse_moe.experts.2.w3.weight"}
    with pytest.raises(WeightsMismatchError, match=r"layer 1 up_proj: experts \[2\] missing"):
        build_model(config, state, torch.float32, "cpu")


def _legacy_state(hf) -> dict[str, torch.Tensor]:
    """hf's weights under the names transformers writes to disk for Mixtral."""
    out = {}
    for name, t in hf.state_dict().items():
        name = name.replace(".mlp.", ".block_sparse_moe.")
        if name.endswith("experts.gate_up_proj"):
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[name.replace("gate_up_proj", f"{e}.w1.weight")] = gate[e]
                out[name.replace("gate_up_proj", f"{e}.w3.weight")] = up[e]
        elif name.endswith("experts.down_proj"):
            for e in range(t.shape[0]):
                out[name.replace("down_proj", f"{e}.w2.weight")] = t[e]
        else:
            out[name] = t
    return out


def test_gemma3_config_both_spellings():
    """transformers 5 nests RoPE per layer type; older config.json files (as Google ships Gemma 3)
    carry rope_theta, rope_local_base_freq and a window pattern at the top level."""
    base = {"architectures": ["Gemma3ForCausalLM"], "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
            "max_position_embeddings": 128, "sliding_window": 8, "query_pre_attn_scalar": 16}
    legacy = ModelConfig.from_hf_dict({**base, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 6,
                                       "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    nested = ModelConfig.from_hf_dict({**base, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})
    for cfg in (legacy, nested):
        assert (cfg.rope_theta, cfg.rope_local_theta, cfg.rope_scaling) == (1e6, 1e4, {"rope_type": "linear", "factor": 8.0})
        assert [cfg.layer_sliding_window(i) for i in range(12)] == [8] * 5 + [None] + [8] * 5 + [None]
        assert cfg.tie_word_embeddings and cfg.qk_norm and cfg.hidden_act == "gelu_pytorch_tanh"
        assert cfg.attention_scale == 0.25


@pytest.mark.parametrize("variant", ["gemma3_local_global", "qwen3_qk_norm_tied", "mixtral_4x2"])
def test_new_architectures_run_on_the_native_backend_by_default(tiny_hf_folder, variant):
    from chatforge.models.backend import load_backend
    from chatforge.models.native_model import NativeModel

    folder, _ = tiny_hf_folder(variant)
    assert isinstance(load_backend(resolve_model(str(folder))), NativeModel)


def test_architectures_outside_the_native_plan_run_on_the_torch_backend(tiny_hf_folder, caplog, monkeypatch):
    """The default (weights="native") computes them in float32 with torch, and says why. Every
    architecture chatforge reads is in the plan today: one is taken out of it here."""
    from chatforge.models import native_model
    from chatforge.models.backend import load_backend
    from chatforge.models.torch_backend import TorchBackend

    plan = tuple(a for a in native_model.NATIVE_ARCHITECTURES if a != "MixtralForCausalLM")
    monkeypatch.setattr(native_model, "NATIVE_ARCHITECTURES", plan)
    folder, _ = tiny_hf_folder("mixtral_4x2")
    with caplog.at_level("WARNING", logger="chatforge.models"):
        backend = load_backend(resolve_model(str(folder)))
    assert isinstance(backend, TorchBackend) and backend.dtype == torch.float32
    assert "MixtralForCausalLM is not in the native plan yet" in caplog.text
