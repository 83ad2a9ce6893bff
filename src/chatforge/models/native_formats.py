"""Weights packed into the native kernels' formats (native/formats.h), once, at load time.

A matrix W [N, K] becomes ceil(N / 8) groups of eight output columns, each group's bytes
contiguous; the layout inside a group is the format's own (native/fmt_blocks.c, fmt_kquants.c,
fmt_f32.c). A GGUF block format is first turned into the per-column blocks its kernel reads,
exactly (the same values, never through float):
- Q4_1, Q8_0 and Q5_0 as they are (Q5_0's fifth bits gathered per group: native/fmt_q5_0.c);
  Q4_0 as Q4_1 (m = -8 d, exact in float16);
- Q4_K and Q6_K as "q4_k" / "q6_k" superblocks of 256 inputs: the file's integer scales as bytes,
  its float16 superscales as float32, the 4-bit values as nibbles, the 6-bit ones as a nibble and
  a bit pair (152 and 212 bytes per 256 weights, the file's 144 and 210; fmt_kquants.c);
then eight columns interleave. "f32": float weights (F32, F16, BF16 checkpoints) and the block
formats without a kernel (Q5_1, Q2_K, Q3_K, Q5_K, ...), dequantized.

Adding a format: its GGML type id -> a conversion here (`_TO_BLOCKS`), a CF_FMT_* id and kernels in C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chatforge.models.gguf_weights import QuantizedTensor

# native/formats.h's CF_FMT_* ids
F32, Q4_1, Q8_0, Q4_K, Q6_K, Q5_0 = 0, 1, 2, 3, 4, 5
FORMAT_NAMES = {F32: "f32", Q4_1: "q4_1", Q8_0: "q8_0", Q4_K: "q4_k", Q6_K: "q6_k", Q5_0: "q5_0"}
# GGML type ids and their block sizes (bytes, inputs) in a GGUF file
GGML_Q4_0, GGML_Q4_1, GGML_Q5_0, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K = 2, 3, 6, 8, 12, 14
_GGML_BLOCKS = {GGML_Q4_0: (18, 32), GGML_Q4_1: (20, 32), GGML_Q5_0: (22, 32), GGML_Q8_0: (34, 32),
                GGML_Q4_K: (144, 256), GGML_Q6_K: (210, 256)}
_FORMAT_OF = {GGML_Q4_0: Q4_1, GGML_Q4_1: Q4_1, GGML_Q5_0: Q5_0, GGML_Q8_0: Q8_0, GGML_Q4_K: Q4_K, GGML_Q6_K: Q6_K}
QK = 32


@dataclass
class PackedMatrix:
    format: int  # a CF_FMT_* id
    N: int
    K: int
    group_bytes: int
    data: np.ndarray  # uint8 [ceil(N / 8) * group_bytes]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def native_format(weight: torch.Tensor | QuantizedTensor) -> int:
    """The format a weight is packed in (F32 for every float tensor and block format without a kernel)."""
    return native_format_of_type(weight.ggml_type) if isinstance(weight, QuantizedTensor) else F32


def native_format_of_type(ggml_type: int) -> int:
    """The format a GGUF matrix of this GGML type is packed in."""
    return _FORMAT_OF.get(ggml_type, F32)


# per group of eight columns and block of 32 inputs (the k-quants' superblock of 256 over 8)
_GROUP_BLOCK_BYTES = {Q4_1: 160, Q8_0: 272, Q4_K: 152, Q6_K: 212, Q5_0: 176}


def packed_nbytes(weights: list[torch.Tensor | QuantizedTensor]) -> int:
    """The bytes `pack(weights)` will take, without packing."""
    fmt = native_format(weights[0])
    N, K = sum(w.shape[0] for w in weights), weights[0].shape[1]
    return packed_matrix_nbytes(fmt, N, K)


def packed_matrix_nbytes(fmt: int, N: int, K: int) -> int:
    groups = -(-N // 8)
    return groups * K * 8 * 4 if fmt == F32 else groups * (K // QK) * _GROUP_BLOCK_BYTES[fmt]


def pack(weights: list[torch.Tensor | QuantizedTensor]) -> PackedMatrix:
    """The rows of `weights` (same K, same native format) stacked and packed as one matrix."""
    fmt = native_format(weights[0])
    if any(native_format(w) != fmt for w in weights):
        raise ValueError("pack: the matrices must share a format")
    if fmt == F32:
        return _pack_f32(np.concatenate([_as_float(w) for w in weights]))
    parts = [_TO_BLOCKS[w.ggml_type](w.blocks) for w in weights]
    blocks = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return _PACKERS[fmt](blocks)


SLICE_ROWS = 8192  # a multiple of 8


def row_slices(weights: list[torch.Tensor | QuantizedTensor], rows: int = SLICE_ROWS) -> list[list]:
    """`weights` as lists to pack one after another, their packed bytes in order being those of
    `pack(weights)`: the list itself, or for one big matrix, slices of `rows` rows (whole groups
    of eight columns each), so that packing never holds a second copy of all of it."""
    if len(weights) != 1 or weights[0].shape[0] <= rows:
        return [weights]
    w, N = weights[0], weights[0].shape[0]
    if isinstance(w, QuantizedTensor):
        return [[QuantizedTensor(w.ggml_type, (min(r + rows, N) - r, w.shape[1]), w.blocks[r : r + rows])]
                for r in range(0, N, rows)]
    return [[w[r : r + rows]] for r in range(0, N, rows)]


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
    """[N8, nb] float16 / float32 -> [G, nb, 16 / 32] bytes: the group's 8 columns side by side per block."""
    N8, nb = scales.shape
    return scales.reshape(N8 // 8, 8, nb).transpose(0, 2, 1).copy().view(np.uint8)


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    N, row_bytes = raw.shape
    return _pad_rows(raw.reshape(N, row_bytes // block_bytes, block_bytes))


def _pack_q4_1(raw: np.ndarray) -> PackedMatrix:
    """GGUF Q4_1 rows (blocks of d f16, m f16, 16 bytes of nibbles) -> 160-byte group blocks:
    128 bytes of interleaved nibbles, d[8], m[8] (float16)."""
    N = raw.shape[0]
    b = _blocks(raw, 20)  # [N8, nb, 20]
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]
    m = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0]
    packed = np.concatenate([_interleave(b[..., 4:], 4), _group_scales(d), _group_scales(m)], axis=-1)
    nb = b.shape[1]
    return PackedMatrix(Q4_1, N, nb * QK, nb * 160, np.ascontiguousarray(packed).reshape(-1))


def _pack_q8_0(raw: np.ndarray) -> PackedMatrix:
    """GGUF Q8_0 rows (blocks of d f16, 32 int8) -> 272-byte group blocks: 256 bytes of interleaved
    values, d[8] (float16)."""
    N = raw.shape[0]
    b = _blocks(raw, 34)  # [N8, nb, 34]
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]
    packed = np.concatenate([_interleave(b[..., 2:], 8), _group_scales(d)], axis=-1)
    nb = b.shape[1]
    return PackedMatrix(Q8_0, N, nb * QK, nb * 272, np.ascontiguousarray(packed).reshape(-1))


def _pack_q5_0(raw: np.ndarray) -> PackedMatrix:
    """GGUF Q5_0 rows (blocks of d f16, 32 fifth bits, 16 bytes of nibbles) -> 176-byte group
    blocks: 128 bytes of interleaved nibbles (Q4_1's), 32 bytes of fifth bits (byte 4 i + t, bit
    c: column i's value 4 c + t), d[8] (float16)."""
    N = raw.shape[0]
    b = _blocks(raw, 22)  # [N8, nb, 22]
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]
    high = np.ascontiguousarray(b[..., 2:6]).view("<u4")[..., 0]  # [N8, nb]: bit j is value j's fifth bit
    fifth = np.empty((*high.shape, 4), np.uint8)  # bit c of byte t: value 4 c + t's (4 bytes a block at a time)
    for t in range(4):
        byte = np.zeros(high.shape, np.uint32)
        for c in range(8):
            byte |= ((high >> (4 * c + t)) & 1) << c
        fifth[..., t] = byte
    packed = np.concatenate([_interleave(b[..., 6:], 4), _interleave(fifth, 1), _group_scales(d)], axis=-1)
    nb = b.shape[1]
    return PackedMatrix(Q5_0, N, nb * QK, nb * 176, np.ascontiguousarray(packed).reshape(-1))


def _pack_q4_k(raw: np.ndarray) -> PackedMatrix:
    """Rows of 152-byte superblock records (`_q4_k_blocks`) -> 1216-byte group superblocks: d[8]
    and -dmin[8] (float32), scale[8 blocks][8 columns] and min[8][8] (uint8), then eight blocks of
    128 interleaved nibble bytes."""
    N = raw.shape[0]
    b = _blocks(raw, 152)  # [N8, nsb, 152]
    N8, nsb, _ = b.shape
    nibbles = _interleave(b[..., 24:].reshape(N8, nsb * 8, 16), 4).reshape(N8 // 8, nsb, 1024)
    d = np.ascontiguousarray(b[..., 0:4]).view(np.float32)[..., 0]
    m = np.ascontiguousarray(b[..., 4:8]).view(np.float32)[..., 0]
    parts = [_group_scales(d), _group_scales(m), _group_bytes(b[..., 8:16]), _group_bytes(b[..., 16:24]), nibbles]
    return PackedMatrix(Q4_K, N, nsb * 256, nsb * 1216, np.ascontiguousarray(np.concatenate(parts, axis=-1)).reshape(-1))


def _pack_q6_k(raw: np.ndarray) -> PackedMatrix:
    """Rows of 276-byte superblock records (`_q6_k_blocks`) -> 1696-byte group superblocks: d[8]
    (float32), scale[8 blocks][2 halves][8 columns] (int8), then per block of 32 inputs 192 bytes:
    128 bytes of nibbles (byte 32 c + 4 i + t: the low 4 bits of chunk c's value in its low half,
    of chunk c + 4's in its high half, as Q4_1's), then 64 of bit pairs (byte 32 h + 4 i + t: the
    high 2 bits of chunk 4 h + k's value at bits 2 k, 2 k + 1), chunk c's byte 4 i + t being
    column i's input 4 c + t."""
    N = raw.shape[0]
    b = _blocks(raw, 276)  # [N8, nsb, 276]
    N8, nsb, _ = b.shape
    u = _interleave(b[..., 20:].reshape(N8, nsb * 8, 32), 8).reshape(N8 // 8, nsb, 8, 8, 32)  # [.., block, chunk, 32]
    nibbles = (u[..., :4, :] & 0xF) | ((u[..., 4:, :] & 0xF) << 4)
    pairs = (u >> 4).reshape(N8 // 8, nsb, 8, 2, 4, 32) << np.array([0, 2, 4, 6], np.uint8)[:, None]
    pairs = np.bitwise_or.reduce(pairs, axis=4)
    values = np.concatenate([nibbles.reshape(N8 // 8, nsb, 8, 128), pairs.reshape(N8 // 8, nsb, 8, 64)], axis=-1)
    d = np.ascontiguousarray(b[..., 0:4]).view(np.float32)[..., 0]
    parts = [_group_scales(d), _group_bytes(b[..., 4:20]), values.reshape(N8 // 8, nsb, 1536)]
    return PackedMatrix(Q6_K, N, nsb * 256, nsb * 1696, np.ascontiguousarray(np.concatenate(parts, axis=-1)).reshape(-1))


def _group_bytes(s: np.ndarray) -> np.ndarray:
    """[N8, nsb, 8 * n] per-column scale bytes (n per block of 32) -> [G, nsb, 64 * n]: per block,
    its n scales of the group's 8 columns ([block][n][column])."""
    N8, nsb, per = s.shape
    s = s.reshape(N8 // 8, 8, nsb, 8, per // 8)
    return s.transpose(0, 2, 3, 4, 1).reshape(N8 // 8, nsb, per * 8)


_PACKERS = {Q4_1: _pack_q4_1, Q8_0: _pack_q8_0, Q4_K: _pack_q4_k, Q6_K: _pack_q6_k, Q5_0: _pack_q5_0}


# -- a GGUF type's rows -> the blocks of 32 its kernel's packer reads (exact conversions) --------


def _split(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """[N, row bytes] -> [N, blocks, block bytes]"""
    size = _GGML_BLOCKS[ggml_type][0]
    return raw.reshape(raw.shape[0], -1, size)


def _f16(b: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> float16 [...]"""
    return np.ascontiguousarray(b).view(np.float16)[..., 0]


def _bytes(a: np.ndarray) -> np.ndarray:
    """[...] float16/float32 -> [..., itemsize] bytes"""
    return np.ascontiguousarray(a)[..., None].view(np.uint8)


def _q4_0_blocks(raw: np.ndarray) -> np.ndarray:
    """Q4_0 (d, 16 nibble bytes; w = d (q - 8)) -> Q4_1 (d, m = -8 d, the same nibbles)."""
    b = _split(raw, GGML_Q4_0)
    m = (-8 * _f16(b[..., 0:2])).astype(np.float16)  # times 8: exact in float16
    return np.concatenate([b[..., 0:2], _bytes(m), b[..., 2:]], axis=-1).reshape(raw.shape[0], -1)


def _q4_k_blocks(raw: np.ndarray) -> np.ndarray:
    """Q4_K superblocks (d, dmin f16, 12 bytes of 6-bit scales and mins, 128 nibble bytes; w = d
    scale q - dmin min per 32 inputs) -> 152-byte records: d and -dmin (float32, exact), scale[8]
    and min[8] unpacked to bytes, and per block of 32 its 4-bit values as Q4_1's nibbles."""
    b = _split(raw, GGML_Q4_K)
    N, nsb, _ = b.shape
    s = b[..., 4:16]
    scale = np.empty((N, nsb, 8), np.uint8)
    mins = np.empty((N, nsb, 8), np.uint8)
    scale[..., :4], mins[..., :4] = s[..., 0:4] & 63, s[..., 4:8] & 63
    scale[..., 4:] = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    mins[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    qs = b[..., 16:].reshape(N, nsb, 4, 32)  # chunk i: low nibbles = sub-block 2i, high = 2i + 1
    q = np.stack([qs & 0xF, qs >> 4], axis=3).reshape(N, nsb, 8, 32)
    nibbles = (q[..., :16] | (q[..., 16:] << 4)).reshape(N, nsb, 128)
    d, neg_dmin = _f16(b[..., 0:2]).astype(np.float32), -_f16(b[..., 2:4]).astype(np.float32)  # exact
    return np.concatenate([_bytes(d), _bytes(neg_dmin), scale, mins, nibbles], axis=-1).reshape(N, -1)


def _q6_k_blocks(raw: np.ndarray) -> np.ndarray:
    """Q6_K superblocks (128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, d f16;
    w = d scale (q - 32) per 16 inputs) -> 276-byte records: d (float32), the 16 scales, and the
    6-bit values q as bytes."""
    b = _split(raw, GGML_Q6_K)
    N, nsb, _ = b.shape
    ql = b[..., 0:128].reshape(N, nsb, 2, 2, 32)  # [half, l // 32, l % 32]
    qh = b[..., 128:192].reshape(N, nsb, 2, 1, 32)
    # within a half of 128: values l, l + 32 from ql's low nibbles (rows 0, 1), l + 64, l + 96 from
    # the high ones; their high bit pairs are bits 0-1, 2-3, 4-5, 6-7 of qh[l]
    low = np.concatenate([ql & 0xF, ql >> 4], axis=3)  # [N, nsb, 2, 4, 32]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    q = (low | (((qh >> shifts) & 3) << 4)).reshape(N, nsb, 256)
    d = _f16(b[..., 208:210]).astype(np.float32)
    return np.concatenate([_bytes(d), b[..., 192:208], q], axis=-1).reshape(N, -1)


_TO_BLOCKS = {
    GGML_Q4_0: _q4_0_blocks, GGML_Q4_1: lambda raw: raw, GGML_Q5_0: lambda raw: raw, GGML_Q8_0: lambda raw: raw,
    GGML_Q4_K: _q4_k_blocks, GGML_Q6_K: _q6_k_blocks,
}


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
    return QuantizedTensor(GGML_Q4_1, (N, K), blocks.reshape(N, -1))


def quantize_q8_0(w: torch.Tensor) -> QuantizedTensor:
    """Float weights [N, K] -> GGUF Q8_0 blocks (d = max|w| / 127 in float16, q = round(w / d))."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // QK, QK)
    d = (g.abs().amax(-1) / 127).half()
    inv = torch.where(d.float() > 0, 1 / d.float(), torch.zeros_like(d.float()))
    q = torch.round(g * inv[..., None]).clamp_(-127, 127).to(torch.int8).numpy().view(np.uint8)
    blocks = np.concatenate([d.numpy()[..., None].view(np.uint8), q], axis=-1)
    return QuantizedTensor(GGML_Q8_0, (N, K), blocks.reshape(N, -1))
