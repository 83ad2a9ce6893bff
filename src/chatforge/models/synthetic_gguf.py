"""Random-weight GGUF files in the shape and quantization mix of the files users bring.

No model hub is reachable from here, and the real GGUFs at hand are tiny, so their fixed costs
(tokenizer, runtime) hide how the weights' memory scales. A file written here has a real model's
tensor shapes and llama.cpp's Q4_K_M mix of types with random weights: good for measuring memory
and loading, meaningless as text. The vocabulary is borrowed from another GGUF (its `tokenizer.*`
metadata), so the file can be served and tokenized.

K-quant layouts (one super-block of 256 inputs): Q4_K = d, dmin (float16), scales[12], qs[128];
Q5_K = d, dmin, scales[12], qh[32], qs[128]; Q6_K = ql[128], qh[64], scales[16], d (float16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from chatforge.models.gguf_file import GGUFFile

# Per K-quant: (byte offset in the block, range) of each float16 super-block scale, chosen so that
# random quants give weights of a checkpoint's size (|w| ~0.03) centred on zero: the min's scale
# (dmin, Q4_K/Q5_K) is about the mean quant (7.5 or 15.5) times d.
_SCALES = {
    Q.Q4_K: ((0, (2e-5, 2e-4)), (2, (1.5e-4, 1.5e-3))),
    Q.Q5_K: ((0, (1e-5, 1e-4)), (2, (1.5e-4, 1.5e-3))),
    Q.Q6_K: ((208, (5e-6, 5e-5)),),
}
_MOSTLY_Q4_K_M = 15  # llama.cpp's general.file_type for Q4_K_M


def random_k_quant_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """A (rows, bytes per row) uint8 matrix of K-quant blocks: every bit pattern of the quants and
    sub-block scales, finite float16 super-block scales in a sensible range."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = cols // block
    raw = np.frombuffer(bytearray(rng.bytes(rows * blocks * size)), np.uint8).reshape(rows, blocks, size)
    for offset, bounds in _SCALES[qtype]:
        scales = rng.uniform(*bounds, raw.shape[:-1]).astype(np.float16)
        raw[:, :, offset : offset + 2] = scales[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int
    rope_base: float


SHAPES = {
    # Llama 3.1 8B (the "7B class" of downloads) but for the vocabulary.
    "7b": LlamaShape(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, context=131072, rope_base=500000.0),
    # Small enough to write and serve in seconds; still every type of the mix.
    "tiny": LlamaShape(hidden=512, layers=4, heads=8, kv_heads=2, ffn=1536, context=8192, rope_base=500000.0),
}


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get Q6_K in Q4_K_M: the first and
    last eighth, and every third one between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def q4_k_m_tensors(shape: LlamaShape, vocab: int) -> list[tuple[str, tuple[int, int] | tuple[int], Q]]:
    """(GGUF name, shape as (rows, inputs) or (n,), type) of every tensor, in llama.cpp's order."""
    head_dim = shape.hidden // shape.heads
    d, kv, ff = shape.hidden, shape.kv_heads * head_dim, shape.ffn
    out: list = [("token_embd.weight", (vocab, d), Q.Q4_K)]
    for i in range(shape.layers):
        wide = Q.Q6_K if _more_bits(i, shape.layers) else Q.Q4_K
        out += [(f"blk.{i}.attn_norm.weight", (d,), Q.F32), (f"blk.{i}.attn_q.weight", (d, d), Q.Q4_K),
                (f"blk.{i}.attn_k.weight", (kv, d), Q.Q4_K), (f"blk.{i}.attn_v.weight", (kv, d), wide),
                (f"blk.{i}.attn_output.weight", (d, d), Q.Q4_K), (f"blk.{i}.ffn_norm.weight", (d,), Q.F32),
                (f"blk.{i}.ffn_gate.weight", (ff, d), Q.Q4_K), (f"blk.{i}.ffn_up.weight", (ff, d), Q.Q4_K),
                (f"blk.{i}.ffn_down.weight", (d, ff), wide)]
    return out + [("output_norm.weight", (d,), Q.F32), ("output.weight", (vocab, d), Q.Q6_K)]


def _copy_vocabulary(writer: gguf.GGUFWriter, source: GGUFFile) -> int:
    """The source's tokenizer.* metadata, with llama.cpp's value types; returns its vocabulary size."""
    for key, value in source.metadata.items():
        if not key.startswith("tokenizer."):
            continue
        if isinstance(value, list):
            strings = bool(value) and isinstance(value[0], str)  # tokens, merges; else token types
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY,
                                 gguf.GGUFValueType.STRING if strings else gguf.GGUFValueType.INT32)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    return len(source.metadata["tokenizer.ggml.tokens"])


def write_synthetic_llama(path: Path, shape: LlamaShape, vocabulary_from: Path, seed: int = 0) -> None:
    """A llama GGUF at `path` in `shape`, typed as llama.cpp's Q4_K_M, with random weights and the
    vocabulary of the GGUF `vocabulary_from`. Streams one tensor at a time (memory: the largest)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"random weights, shape of a {shape.hidden}x{shape.layers} Llama Q4_K_M")
    w.add_file_type(_MOSTLY_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_block_count(shape.layers)
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.hidden // shape.heads)
    w.add_rope_freq_base(shape.rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    source = GGUFFile(vocabulary_from)
    try:
        vocab = _copy_vocabulary(w, source)
    finally:
        source.close()
    w.add_vocab_size(vocab)
    tensors = q4_k_m_tensors(shape, vocab)
    for name, dims, qtype in tensors:
        if qtype == Q.F32:
            w.add_tensor_info(name, dims, np.dtype(np.float32), 4 * dims[0])
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            w.add_tensor_info(name, (dims[0], dims[1] // block * size), np.dtype(np.uint8),
                              dims[0] * dims[1] // block * size, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, dims, qtype in tensors:
        if qtype == Q.F32:  # RMSNorm weights near 1, as trained ones are
            w.write_tensor_data(rng.uniform(0.8, 1.2, dims).astype(np.float32))
        else:
            w.write_tensor_data(random_k_quant_blocks(*dims, qtype, rng))
    w.close()
