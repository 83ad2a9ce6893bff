"""GGUF loading: tiny models written as GGUF files in the test (every tensor type, llama's q/k
permutation, RoPE scaling, Qwen2 biases) give transformers' logits, and the tensor mapping
rejects what it does not know."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from chatforge.models.attention import AttentionMetadata
from chatforge.models.errors import UnsupportedArchitectureError, WeightsMismatchError
from chatforge.models.loader import load_model
from chatforge.models.source import ModelSource
from chatforge.models.synthetic_gguf import random_k_quant_blocks

# HF name part -> llama.cpp name part (written independently of the loader's own table).
TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
# The quantization each tensor kind gets in the quantized test: every simple type at least once.
QUANT = {"attn_q": Q.F16, "attn_k": Q.BF16, "attn_v": Q.Q4_0, "attn_output": Q.Q4_1, "ffn_gate": Q.Q8_0,
         "ffn_up": Q.Q4_1, "ffn_down": Q.Q4_0, "token_embd": Q.Q8_0, "output": Q.F16}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, n, *part, suffix = hf.split(".")
        return f"blk.{n}.{TO_GGUF['.'.join(part)]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to llama q/k rows (pairs interleaved for its RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf_model, arch: str, quantized: bool, rope_freqs: np.ndarray | None = None,
               extra_tensors: dict | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Writes hf_model as GGUF, leaving out the GGUF names in `skip` and adding `extra_tensors`
    (name -> (stored array, type)) as they are; returns, per HF name, the float32 weights the
    file really holds for the model's own tensors (after quantization), in HF layout."""
    c = hf_model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if c.rope_parameters["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(c.rope_parameters["factor"])
    held = {}
    for hf, tensor in hf_model.state_dict().items():
        if hf == "lm_head.weight" and c.tie_word_embeddings:
            continue
        name = gguf_name(hf)
        if name in skip:
            continue
        data = tensor.numpy().astype(np.float32)
        kind = name.split(".")[-2]
        heads = {"attn_q": c.num_attention_heads, "attn_k": c.num_key_value_heads}.get(kind)
        if arch == "llama" and heads:
            data = llama_cpp_permute(data, heads)
        qtype = QUANT.get(kind, Q.F32) if quantized and data.ndim == 2 else Q.F32
        stored = data if qtype == Q.F32 else quantize(data, qtype)
        w.add_tensor(name, stored, raw_dtype=qtype)
        back = data if qtype == Q.F32 else dequantize(stored, qtype).reshape(data.shape)
        held[hf] = llama_cpp_unpermute(back, heads) if arch == "llama" and heads else back
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    for name, (data, qtype) in (extra_tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def llama_cpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def logits_both(model, hf_model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    meta = AttentionMetadata.build([len(ids)], [len(ids)], None, 16)
    with torch.inference_mode():
        ours = model.compute_logits(model(torch.tensor(ids), meta.positions, meta, None))
        theirs = hf_model(input_ids=torch.tensor([ids])).logits[0]
    return ours, theirs


IDS = [5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 12, 50, 7, 19]


def load_gguf(path):
    return load_model(ModelSource(path.stem, path, "gguf"))


def test_llama3_rope_freqs_gguf_equals_transformers(tmp_path, tiny_hf_folder):
    """llama.cpp stores llama3 RoPE scaling as per-frequency divisors in `rope_freqs`."""
    _, hf = tiny_hf_folder("llama_llama3_tied")
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    factors = (plain / hf.model.rotary_emb.inv_freq).numpy()
    assert factors.max() > 1.5  # the scaling is real
    path = tmp_path / "llama3.gguf"
    write_gguf(path, hf, "llama", quantized=False, rope_freqs=factors)
    model, config = load_gguf(path)
    assert config.rope_scaling["rope_type"] == "freq_factors" and config.tie_word_embeddings
    ours, theirs = logits_both(model, hf, IDS)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_qwen2_gguf_with_biases_equals_transformers(tmp_path, tiny_hf_folder):
    _, hf = tiny_hf_folder("qwen2_bias_tied")
    path = tmp_path / "qwen2.gguf"
    write_gguf(path, hf, "qwen2", quantized=False)
    model, config = load_gguf(path)
    assert config.architecture == "Qwen2ForCausalLM" and config.attention_bias
    ours, theirs = logits_both(model, hf, IDS)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_quantized_gguf_equals_transformers_on_the_same_weights(tmp_path, tiny_hf_folder):
    """F16, BF16, Q8_0, Q4_0 and Q4_1 tensors, permuted q/k, untied output, linear RoPE scaling:
    every loaded tensor equals what the file holds, and the logits equal transformers' run on
    those same (quantized, then dequantized) weights."""
    _, hf = tiny_hf_folder("llama_linear_untied")
    path = tmp_path / "quant.gguf"
    held = write_gguf(path, hf, "llama", quantized=True)
    model, config = load_gguf(path)
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert not config.tie_word_embeddings
    ours_state = model.state_dict()
    assert sorted(ours_state) == sorted(held)
    for name, weights in held.items():
        assert torch.equal(ours_state[name], torch.from_numpy(np.ascontiguousarray(weights))), name
    original = hf.state_dict()["model.layers.0.self_attn.v_proj.weight"]
    assert not torch.equal(ours_state["model.layers.0.self_attn.v_proj.weight"], original)  # really quantized
    hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in held.items()})
    ours, theirs = logits_both(model, hf, IDS)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_k_quant_tensors_load(tmp_path):
    """Q4_K, Q5_K and Q6_K tensors come out exactly as the gguf package dequantizes them."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path / "kquant.gguf"
    rng = np.random.default_rng(0)
    kinds = {"blk.0.ffn_gate.weight": Q.Q4_K, "blk.0.ffn_up.weight": Q.Q5_K,
             "blk.0.ffn_down.weight": Q.Q6_K, "blk.0.attn_q.weight": Q.Q4_K}
    raw = {name: random_k_quant_blocks(256, 256, qtype, rng) for name, qtype in kinds.items()}
    extra = {name: (data, kinds[name]) for name, data in raw.items()}
    write_gguf(path, hf, "llama", quantized=False, skip=tuple(kinds), extra_tensors=extra)
    model, _ = load_gguf(path)
    state = model.state_dict()
    for name, qtype in kinds.items():
        expected = dequantize(raw[name], qtype).reshape(256, 256)
        assert np.isfinite(expected).all()
        if name == "blk.0.attn_q.weight":
            expected = llama_cpp_unpermute(expected, 4)
        hf_name = next(k for k in state if gguf_name(k) == name)
        assert torch.equal(state[hf_name], torch.from_numpy(np.ascontiguousarray(expected))), name


def test_unknown_gguf_tensor_is_a_clear_error(tmp_path, tiny_hf_folder):
    _, hf = tiny_hf_folder("llama_linear_untied")
    path = tmp_path / "extra.gguf"
    write_gguf(path, hf, "llama", quantized=False, extra_tensors={"blk.0.attn_mystery.weight": (np.zeros(4, np.float32), Q.F32)})
    with pytest.raises(WeightsMismatchError, match=r"unexpected GGUF tensor 'blk\.0\.attn_mystery\.weight'"):
        load_gguf(path)


def test_missing_gguf_tensor_is_a_clear_error(tmp_path, tiny_hf_folder):
    _, hf = tiny_hf_folder("llama_linear_untied")
    path = tmp_path / "missing.gguf"
    write_gguf(path, hf, "llama", quantized=False, skip=("blk.1.ffn_up.weight",))
    with pytest.raises(WeightsMismatchError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_gguf(path)


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(path, "phi3")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitectureError, match=r"'phi3' is not supported; supported: gemma3, llama, qwen2, qwen3"):
        load_gguf(path)
