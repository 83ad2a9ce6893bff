"""Weights packed into the native kernels' formats (native/formats.h), once, at load time.

A matrix W [N, K] becomes ceil(N / 8) groups of eight output columns, each group's bytes
contiguous; the layout inside a group is the format's own (native/fmt_blocks.c, fmt_f32.c):
- "q4_1", "q8_0": a GGUF file's blocks as they are (the same scales, the same 4- or 8-bit values),
  only reordered so that eight columns interleave; no float copy is ever made;
- "f32": float weights (F32, F16, BF16 checkpoints), and, until they get a kernel of their own,
  block formats other than Q4_1 and Q8_0, dequantized.

Adding a format: its GGML type id -> a packing function here, a CF_FMT_* id and kernels in C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chatforge.models.gguf_weights import QuantizedTensor

# native/formats.h's CF_FMT_* ids
F32, Q4_1, Q8_0 = 0, 1, 2
FORMAT_NAMES = {F32: "f32", Q4_1: "q4_1", Q8_0: "q8_0"}
# GGML type ids of the block formats with a kernel, and their block sizes in bytes
_GGML_Q4_1, _GGML_Q8_0 = 3, 8
_BLOCK_BYTES = {_GGML_Q4_1: 20, _GGML_Q8_0: 34}
QK = 32


@dataclass
class PackedMatrix:
    format: int  # F32, Q4_1 or Q8_0
    N: int
    K: int
    group_bytes: int
    data: np.ndarray  # uint8 [ceil(N / 8) * group_bytes]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def native_format(weight: torch.Tensor | QuantizedTensor) -> int:
    """The format a weight is packed in (F32 for every float tensor and block format without a kernel)."""
    if isinstance(weight, QuantizedTensor):
        return {_GGML_Q4_1: Q4_1, _GGML_Q8_0: Q8_0}.get(weight.ggml_type, F32)
    return F32


_GROUP_BLOCK_BYTES = {Q4_1: 160, Q8_0: 272}  # per group of eight columns and block of 32 inputs


def packed_nbytes(weights: list[torch.Tensor | QuantizedTensor]) -> int:
    """The bytes `pack(weights)` will take, without packing."""
    fmt = native_format(weights[0])
    N, K = sum(w.shape[0] for w in weights), weights[0].shape[1]
    groups = -(-N // 8)
    return groups * K * 8 * 4 if fmt == F32 else groups * (K // QK) * _GROUP_BLOCK_BYTES[fmt]


def pack(weights: list[torch.Tensor | QuantizedTensor]) -> PackedMatrix:
    """The rows of `weights` (same K, same native format) stacked and packed as one matrix."""
    fmt = native_format(weights[0])
    if any(native_format(w) != fmt for w in weights):
        raise ValueError("pack: the matrices must share a format")
    if fmt == F32:
        return _pack_f32(np.concatenate([_as_float(w) for w in weights]))
    blocks = np.concatenate([w.blocks for w in weights])
    return _pack_q4_1(blocks) if fmt == Q4_1 else _pack_q8_0(blocks)


def _as_float(w: torch.Tensor | QuantizedTensor) -> np.ndarray:
    if isinstance(w, QuantizedTensor):
        return w.dequantize()
    return w.detach().to(device="cpu", dtype=torch.float32).numpy()


def _pad_rows(a: np.ndarray) -> np.ndarray:
    """Rows padded with zeros to a multiple of 8 (a zero block contributes 0 in every format)."""
    extra = -a.shape[0] % 8
    return a if not extra else np.concatenate([a, np.zeros((extra, *a.shape[1:]), dtype=a.dtype)])


def _pack_f32(w: np.ndarray) -> PackedMatrix:
    """[N, K] float -> groups [K][8] float32: W[8g + i][k] at k * 8 + i."""
    N, K = w.shape
    groups = _pad_rows(np.ascontiguousarray(w, dtype=np.float32)).reshape(-1, 8, K)
    data = np.ascontiguousarray(groups.transpose(0, 2, 1)).view(np.uint8).reshape(-1)
    return PackedMatrix(F32, N, K, K * 8 * 4, data)


def _interleave(q: np.ndarray, chunks: int) -> np.ndarray:
    """[N8, nb, 4 * chunks] per-column bytes -> [G, nb, chunks * 32]: 4 bytes of column 0, the same
    4 of column 1, ..., column 7, then the next 4 (byte 32 c + 4 i + t = column i's byte 4 c + t)."""
    N8, nb, _ = q.shape
    return q.reshape(N8 // 8, 8, nb, chunks, 4).transpose(0, 2, 3, 1, 4).reshape(N8 // 8, nb, chunks * 32)


def _group_scales(scales: np.ndarray) -> np.ndarray:
    """[N8, nb] float16 -> [G, nb, 16] bytes: the group's 8 columns side by side per block."""
    N8, nb = scales.shape
    return scales.reshape(N8 // 8, 8, nb).transpose(0, 2, 1).copy().view(np.uint8)


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    N, row_bytes = raw.shape
    return _pad_rows(raw.reshape(N, row_bytes // block_bytes, block_bytes))


def _pack_q4_1(raw: np.ndarray) -> PackedMatrix:
    """GGUF Q4_1 rows (blocks of d f16, m f16, 16 bytes of nibbles) -> 160-byte group blocks:
    128 bytes of interleaved nibbles, d[8], m[8] (float16)."""
    N = raw.shape[0]
    b = _blocks(raw, _BLOCK_BYTES[_GGML_Q4_1])  # [N8, nb, 20]
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]
    m = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0]
    packed = np.concatenate([_interleave(b[..., 4:], 4), _group_scales(d), _group_scales(m)], axis=-1)
    nb = b.shape[1]
    return PackedMatrix(Q4_1, N, nb * QK, nb * 160, np.ascontiguousarray(packed).reshape(-1))


def _pack_q8_0(raw: np.ndarray) -> PackedMatrix:
    """GGUF Q8_0 rows (blocks of d f16, 32 int8) -> 272-byte group blocks: 256 bytes of interleaved
    values, d[8] (float16)."""
    N = raw.shape[0]
    b = _blocks(raw, _BLOCK_BYTES[_GGML_Q8_0])  # [N8, nb, 34]
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]
    packed = np.concatenate([_interleave(b[..., 2:], 8), _group_scales(d)], axis=-1)
    nb = b.shape[1]
    return PackedMatrix(Q8_0, N, nb * QK, nb * 272, np.ascontiguousarray(packed).reshape(-1))


def quantize_q4_1(w: torch.Tensor) -> QuantizedTensor:
    """Float weights [N, K] -> GGUF Q4_1 blocks (per block of 32: d = (max - min) / 15, m = min,
    d and m rounded to float16 first, q = round((w - m) / d)); for tests and float checkpoints."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // QK, QK)
    lo, hi = g.amin(-1), g.amax(-1)
    d = ((hi - lo) / 15).half()
    m = lo.half()
    inv = torch.where(d.float() > 0, 1 / d.float(), torch.zeros_like(lo))
    q = torch.round((g - m.float()[..., None]) * inv[..., None]).clamp_(0, 15).to(torch.uint8)
    nibbles = (q[..., :16] | (q[..., 16:] << 4)).numpy()
    blocks = np.concatenate([d.numpy()[..., None].view(np.uint8), m.numpy()[..., None].view(np.uint8), nibbles], axis=-1)
    return QuantizedTensor(_GGML_Q4_1, (N, K), blocks.reshape(N, -1))


def quantize_q8_0(w: torch.Tensor) -> QuantizedTensor:
    """Float weights [N, K] -> GGUF Q8_0 blocks (d = max|w| / 127 in float16, q = round(w / d))."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // QK, QK)
    d = (g.abs().amax(-1) / 127).half()
    inv = torch.where(d.float() > 0, 1 / d.float(), torch.zeros_like(d.float()))
    q = torch.round(g * inv[..., None]).clamp_(-127, 127).to(torch.int8).numpy().view(np.uint8)
    blocks = np.concatenate([d.numpy()[..., None].view(np.uint8), q], axis=-1)
    return QuantizedTensor(_GGML_Q8_0, (N, K), blocks.reshape(N, -1))
