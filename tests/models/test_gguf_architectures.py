"""Qwen3, Gemma 3 and Mixtral written as GGUF files in the test, with llama.cpp's tensor names,
metadata keys and conversions (Gemma's 1 + w norms, llama's q/k permutation, Mixtral's stacked
or per-expert tensors): they load to transformers' logits."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from chatforge.models.loader import load_model
from chatforge.models.source import ModelSource

from .test_gguf_loading import IDS, llama_cpp_permute, logits_both

# HF module path -> llama.cpp tensor name part (written independently of the loader's tables).
COMMON = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "mlp.gate": "ffn_gate_inp",
}
LLAMA = {**COMMON, "post_attention_layernorm": "ffn_norm"}
GEMMA3 = {**COMMON, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}


def gguf_tensors(hf, arch: str, per_expert: bool = False) -> dict[str, np.ndarray]:
    """hf's weights under llama.cpp's names, converted as llama.cpp's converter does."""
    c = hf.config
    names = GEMMA3 if arch == "gemma3" else LLAMA
    out = {}
    for hf_name, tensor in hf.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        data = tensor.numpy().astype(np.float32)
        if hf_name in GLOBAL:
            name = GLOBAL[hf_name]
        else:
            _, _, n, *part = hf_name.split(".")
            module, suffix = ".".join(part[:-1]), part[-1]
            if module == "mlp.experts":  # transformers' in-memory layout: [E, 2 ff, d] and [E, d, ff]
                stacked = dict(zip(("ffn_gate", "ffn_up"), np.split(data, 2, axis=1))) if suffix == "gate_up_proj" \
                    else {"ffn_down": data}
                for kind, w in stacked.items():
                    if per_expert:
                        out.update({f"blk.{n}.{kind}.{e}.weight": w[e] for e in range(w.shape[0])})
                    else:
                        out[f"blk.{n}.{kind}_exps.weight"] = w
                continue
            name = f"blk.{n}.{names[module]}.{suffix}"
            kind = names[module]
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                data = llama_cpp_permute(data, c.num_attention_heads if kind == "attn_q" else c.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's converter stores the factor 1 + w
        out[name] = data
    return out


def write(path, hf, arch: str, per_expert: bool = False, vocabulary=None, qtype=None, raw=None) -> None:
    """hf as a GGUF file at `path`; `vocabulary(writer)` adds tokenizer metadata if given; with
    `qtype` (a gguf.GGMLQuantizationType) every matrix in that type but the router, which
    llama.cpp's quantizer leaves in float; `raw`: tensors written instead of hf's, by GGUF name,
    as (bytes in the type's layout, type)."""
    c = hf.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    if arch == "gemma3":
        w.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
        w.add_sliding_window(c.sliding_window)
    else:
        w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    if getattr(c, "num_local_experts", None):
        w.add_expert_count(c.num_local_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
    w.add_vocab_size(c.vocab_size)
    if vocabulary is not None:
        vocabulary(w)
    for name, data in gguf_tensors(hf, arch, per_expert).items():
        if raw and name in raw:
            w.add_tensor(name, raw[name][0], raw_dtype=raw[name][1])
        elif qtype is not None and data.ndim >= 2 and ".ffn_gate_inp." not in name:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("variant, arch, per_expert, expected", [
    ("mixtral_4x2", "llama", False, "MixtralForCausalLM"),
    ("mixtral_4x2", "llama", True, "MixtralForCausalLM"),  # old files: one tensor per expert
    ("qwen3_qk_norm_tied", "qwen3", False, "Qwen3ForCausalLM"),
    ("gemma3_six_layers", "gemma3", False, "Gemma3ForCausalLM"),
])
def test_gguf_equals_transformers(tmp_path, tiny_hf_folder, variant, arch, per_expert, expected):
    _, hf = tiny_hf_folder(variant)
    path = tmp_path / f"{variant}.gguf"
    write(path, hf, arch, per_expert)
    model, config = load_model(ModelSource(path.stem, path, "gguf"))
    assert config.architecture == expected
    ours, theirs = logits_both(model, hf, IDS)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert theirs.std().item() > 0.1
    if arch == "gemma3":  # the stored 1 + w came back as transformers' w
        torch.testing.assert_close(model.model.norm.weight, hf.model.norm.weight, rtol=0, atol=1e-6)
        assert [config.layer_sliding_window(i) for i in range(6)] == [4] * 5 + [None]
    if expected == "MixtralForCausalLM":
        assert (config.num_experts, config.num_experts_per_tok) == (4, 2)
