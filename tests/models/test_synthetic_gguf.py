"""The random-weight Llama GGUF that benchmarks/memory_check.py writes in a 7B's shape, here in a
tiny shape: llama.cpp's Q4_K_M mix of types, finite weights of a checkpoint's size, the bundled
model's vocabulary, and served by the native backend with its formats kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from chatforge.models.backend import load_native
from chatforge.models.gguf_file import GGUFFile
from chatforge.models.native_model import NativeModel
from chatforge.models.source import ModelSource, bundled_gguf_path
from chatforge.models.synthetic_gguf import SHAPES, q4_k_m_tensors, write_synthetic_llama
from chatforge.text.tokenizer import Tokenizer

from .test_native_model import native_logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "tiny.gguf"
    write_synthetic_llama(path, SHAPES["tiny"], bundled_gguf_path())
    return path


def test_the_7b_shape_has_llama_cpp_q4_k_m_types_and_size():
    tensors = q4_k_m_tensors(SHAPES["7b"], vocab=49152)
    types = {name: qtype for name, _, qtype in tensors}
    # llama.cpp gives attn_v and ffn_down Q6_K in the first and last 4 of 32 layers and every third between
    wide = [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == Q.Q6_K]
    assert wide == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert all(types[f"blk.{i}.attn_v.weight"] == types[f"blk.{i}.ffn_down.weight"] for i in range(32))
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == Q.Q4_K
    assert {types[f"blk.7.{k}.weight"] for k in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")} == {Q.Q4_K}
    params = sum(int(np.prod(shape)) for _, shape, _ in tensors)
    assert 7.35e9 < params < 7.4e9  # Llama 3.1 8B's 8.03e9 less 79k vocabulary rows in and out (0.65e9)
    size = {Q.Q4_K: 144 / 256, Q.Q6_K: 210 / 256, Q.F32: 4}
    gib = sum(int(np.prod(shape)) * size[q] for _, shape, q in tensors) / 2**30
    assert 4.0 < gib < 4.3  # a Q4_K_M 8B file is 4.6 GiB with its 128k vocabulary


def test_the_tiny_file_holds_the_mix_finite_weights_and_the_bundled_vocabulary(tiny):
    f = GGUFFile(tiny)
    try:
        assert f.metadata["general.file_type"] == 15 and "random weights" in f.metadata["general.name"]
        assert len(f.metadata["tokenizer.ggml.tokens"]) == f.metadata["llama.vocab_size"] == 49152
        expected = {name: int(qtype) for name, _, qtype in q4_k_m_tensors(SHAPES["tiny"], 49152)}
        assert {name: t.ggml_type for name, t in f.tensors.items()} == expected
        for name in ("token_embd.weight", "blk.2.attn_v.weight", "blk.0.ffn_up.weight", "output.weight"):
            w = f.dequantize(name)
            assert np.isfinite(w).all() and 0.01 < w.std() < 0.1 and abs(w.mean()) < 0.005, name
        tokenizer = Tokenizer.from_gguf(f.metadata)
    finally:
        f.close()
    assert tokenizer.decode(tokenizer.encode("The capital of France is")) == "The capital of France is"


def test_the_native_backend_keeps_the_formats_and_computes_finite_logits(tiny):
    model = load_native(ModelSource("tiny", tiny, "gguf"), threads=1)
    assert isinstance(model, NativeModel)
    assert model.weight_bytes < 1.1 * tiny.stat().st_size
    logits = native_logits(model, [1, 504, 3458, 282, 4649, 314])
    assert logits.shape == (6, 49152) and torch.isfinite(logits).all()
