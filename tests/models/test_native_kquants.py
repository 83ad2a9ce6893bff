"""The GGUF block types a downloaded Q4_K_M file mixes (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K) in the
native kernels: packed exactly (every weight read back equals the `gguf` package's own
dequantization, bit for bit), multiplied with the 8-bit activations' arithmetic, and the same
bits for a row whatever else is computed with it.

Tolerance: the kernels compute sum over blocks of (integer dot) * scale * activation scale in
float32; against the float64 product of the dequantized weights and the 8-bit activations they
stay within 1e-6 of the magnitudes (max |x| . |w|); against the float32 activations within 1%
(the 8-bit rounding of the activations, as llama.cpp's)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chatforge.models import native
from chatforge.models.gguf_weights import QuantizedTensor
from chatforge.models.native_formats import (
    GGML_Q4_0, GGML_Q4_1, GGML_Q5_0, GGML_Q6_K, GGML_Q8_0, GGML_Q4_K, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0, native_format,
    pack, packed_nbytes,
)
from chatforge.models.native_model import _Matrix

TYPES = {GGML_Q4_0: (18, 32, Q4_1), GGML_Q4_1: (20, 32, Q4_1), GGML_Q5_0: (22, 32, Q5_0), GGML_Q8_0: (34, 32, Q8_0),
         GGML_Q4_K: (144, 256, Q4_K), GGML_Q6_K: (210, 256, Q6_K)}
# where each type keeps its float16 scales (byte offsets in a block)
SCALE_OFFSETS = {GGML_Q4_0: (0,), GGML_Q4_1: (0, 2), GGML_Q5_0: (0,), GGML_Q8_0: (0,), GGML_Q4_K: (0, 2), GGML_Q6_K: (208,)}


def random_blocks(ggml_type: int, n: int, k: int, seed: int) -> QuantizedTensor:
    """Random bytes in the type's layout (every bit pattern of the values, scales and mins),
    with float16 scales of a checkpoint's size."""
    size, per_block, _ = TYPES[ggml_type]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, k // per_block, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[ggml_type]:
        scales = rng.uniform(0.0005, 0.005, (n, k // per_block)).astype(np.float16)
        raw[..., off : off + 2] = scales[..., None].view(np.uint8)
    return QuantizedTensor(ggml_type, (n, k), raw.reshape(n, -1))


def described(weights: list[QuantizedTensor]) -> _Matrix:
    p = pack(weights)
    m = _Matrix(p.format, p.N, p.K, p.group_bytes, p.data.ctypes.data)
    m.keep = p
    return m


def matmul(m: _Matrix, x: torch.Tensor, rows=None, groups=None, baseline=False) -> torch.Tensor:
    M, K = x.shape
    y = torch.zeros(M, m.N)
    scratch = torch.empty(M * K * 3 + 64, dtype=torch.uint8)
    r0, r1 = rows or (0, M)
    g0, g1 = groups or (0, (m.N + 7) // 8)
    native.library().cf_test_matmul(ctypes.byref(m), x.data_ptr(), M, r0, r1, g0, g1, y.data_ptr(), scratch.data_ptr(), 0,
                                    int(baseline))
    return y


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    blocks = x.double().reshape(x.shape[0], -1, 32)
    d = (blocks.abs().amax(-1, keepdim=True).float() / 127).double()
    return (torch.round(blocks / torch.where(d > 0, d, torch.ones_like(d))) * d).reshape(x.shape)


@pytest.mark.parametrize("ggml_type", list(TYPES))
def test_packing_reads_back_the_gguf_dequantization_exactly(ggml_type):
    w = random_blocks(ggml_type, 37, 512, seed=ggml_type)  # 37 columns: a padded last group
    m = described([w])
    assert m.format == TYPES[ggml_type][2] == native_format(w)
    assert m.keep.nbytes == packed_nbytes([w])
    reference = w.dequantize()
    out = torch.empty(512)
    for n in range(37):
        native.library().cf_test_row(ctypes.byref(m), n, out.data_ptr())
        assert np.array_equal(out.numpy(), reference[n]), n


@pytest.mark.parametrize("ggml_type", list(TYPES))
@pytest.mark.parametrize("rows, n", [(1, 640), (6, 37)])
def test_matmul_equals_the_dequantized_product(ggml_type, rows, n):
    w = random_blocks(ggml_type, n, 1024, seed=rows + n)
    m = described([w])
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1024, generator=g)
    x[0, :32] = 0  # an all-zero block (activation scale 0)
    reference = torch.from_numpy(w.dequantize()).double()
    y = matmul(m, x).double()
    scale = (x.double().abs() @ reference.abs().t()).max()
    assert float((y - quantized_activations(x) @ reference.t()).abs().max() / scale) < 1e-6
    assert float((y - x.double() @ reference.t()).abs().max() / scale) < 0.01


@pytest.mark.parametrize("ggml_type", [GGML_Q4_K, GGML_Q6_K, GGML_Q5_0])
def test_a_row_gets_the_same_bits_whatever_rows_and_columns_are_computed_with_it(ggml_type):
    m = described([random_blocks(ggml_type, 100, 256, seed=7)])
    x = torch.randn(11, 256, generator=torch.Generator().manual_seed(8))
    whole = matmul(m, x)
    for start, end in [(0, 1), (3, 5), (2, 9), (4, 11)]:  # every tile height, rows at other offsets
        assert torch.equal(matmul(m, x[start:end].clone()), whole[start:end])
    part = matmul(m, x, rows=(2, 7), groups=(3, 11))
    assert torch.equal(part[2:7, 24:88], whole[2:7, 24:88])
    assert (part[:2] == 0).all() and (part[:, 88:] == 0).all()


def q8_activations(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernels' 8-bit activations of x: q int8 [M, K], d and s float32 [M, K / 32]."""
    M, K = x.shape
    q, d, s = np.empty((M, K), np.int8), np.empty((M, K // 32), np.float32), np.empty((M, K // 32), np.float32)
    native.library().cf_quantize_q8(x.data_ptr(), M, K, q.ctypes.data, d.ctypes.data, s.ctypes.data)
    return q, d, s


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fma: a * b is exact in float64 (24 + 24 bits); the sum rounds to float64, then to
    float32 (a double rounding, which differs from the hardware's single one with a chance of
    about 2^-28 an operation: not for the fixed inputs below, checked)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def kquant_reference(w: QuantizedTensor, x: torch.Tensor) -> np.ndarray:
    """y [M, N] by fmt_kquants.c's arithmetic written out in numpy, block after block: Q4_K
    acc = fma(dot, D dx, acc), acc = fma(M, sx, acc); Q6_K acc = fma(dot_lo, D_lo dx, acc),
    acc = fma(dot_hi, D_hi dx, acc); D = d scale, M = -dmin min and the products with dx in float32."""
    from chatforge.models.native_formats import _q4_k_blocks, _q6_k_blocks

    N, K = w.shape
    xq, dx, sx = q8_activations(x)
    xq = xq.astype(np.int64)
    acc = np.zeros((x.shape[0], N), np.float32)
    if w.ggml_type == GGML_Q4_K:
        r = _q4_k_blocks(w.blocks).reshape(N, K // 256, 152)
        d, neg_dmin = r[..., 0:4].copy().view(np.float32), r[..., 4:8].copy().view(np.float32)  # [N, nsb, 1]
        D = (d * r[..., 8:16].astype(np.float32)).reshape(N, -1)  # float32 products, exact
        Mn = (neg_dmin * r[..., 16:24].astype(np.float32)).reshape(N, -1)
        nib = r[..., 24:].reshape(N, -1, 16)
        q = np.concatenate([nib & 0xF, nib >> 4], axis=-1).astype(np.int64)  # [N, nb, 32]
        for b in range(K // 32):
            dot = (xq[:, 32 * b : 32 * b + 32] @ q[:, b].T).astype(np.float32)
            acc = fma32(dot, D[None, :, b] * dx[:, b : b + 1], acc)
            acc = fma32(Mn[None, :, b], np.broadcast_to(sx[:, b : b + 1], acc.shape), acc)
    else:
        r = _q6_k_blocks(w.blocks).reshape(N, K // 256, 276)
        d = r[..., 0:4].copy().view(np.float32)
        D = (d * r[..., 4:20].copy().view(np.int8).astype(np.float32)).reshape(N, -1, 2)
        q = r[..., 20:].reshape(N, -1, 32).astype(np.int64) - 32
        for b in range(K // 32):
            for h in range(2):
                dot = (xq[:, 32 * b + 16 * h : 32 * b + 16 * h + 16] @ q[:, b, 16 * h : 16 * h + 16].T).astype(np.float32)
                acc = fma32(dot, D[None, :, b, h] * dx[:, b : b + 1], acc)
    return acc


@pytest.mark.parametrize("ggml_type", [GGML_Q4_K, GGML_Q6_K])
def test_kquant_kernels_compute_exactly_the_documented_arithmetic(ggml_type):
    """Bit for bit: whatever the layout in memory, the operations of every output element stay
    those of fmt_kquants.c's header (1, 4 and 9 rows: one tile, one full tile, tiles that reuse
    the group's kept scales and values)."""
    w = random_blocks(ggml_type, 21, 512, seed=11)
    m = described([w])
    for rows in (1, 4, 9):
        x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
        x[0, :32] = 0
        assert np.array_equal(matmul(m, x).numpy(), kquant_reference(w, x)), rows


def test_types_sharing_a_kernel_pack_side_by_side():
    """A projection whose parts are Q4_0 and Q4_1 is one Q4_1 matrix."""
    parts = [random_blocks(GGML_Q4_0, 16, 256, 1), random_blocks(GGML_Q4_1, 8, 256, 2)]
    m = described(parts)
    assert m.format == Q4_1
    reference = np.concatenate([p.dequantize() for p in parts])
    out = torch.empty(256)
    for n in (0, 15, 16, 23):
        native.library().cf_test_row(ctypes.byref(m), n, out.data_ptr())
        assert np.array_equal(out.numpy(), reference[n])


def as_q8_0(w: QuantizedTensor) -> QuantizedTensor:
    """Q5_0 blocks (d, 32 fifth bits, 16 nibble bytes) as Q8_0 blocks of the same values (d, q - 16)."""
    n, k = w.shape
    b = w.blocks.reshape(n, k // 32, 22)
    bits = ((np.ascontiguousarray(b[..., 2:6]).view("<u4") >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    q = (np.concatenate([b[..., 6:] & 0xF, b[..., 6:] >> 4], axis=-1) | (bits << 4)).astype(np.int16) - 16
    blocks = np.concatenate([b[..., 0:2], q.astype(np.int8).view(np.uint8)], axis=-1)
    return QuantizedTensor(GGML_Q8_0, (n, k), blocks.reshape(n, -1))


@pytest.mark.parametrize("rows", [1, 3, 4, 9, 32])
def test_q5_0_kept_at_its_size_gives_the_bits_of_its_values_as_q8_0(rows):
    """Q5_0 is multiplied by Q8_0's kernels on its unpacked values (fmt_q5_0.c): the same bits
    as the Q8_0 matrix of those values, in both kernel variants, at 22 bytes per 32 weights."""
    w = random_blocks(GGML_Q5_0, 45, 512, seed=rows)  # 6 groups, the last one partial
    m, m8 = described([w]), described([as_q8_0(w)])
    assert m.keep.nbytes == 6 * 16 * 176 and m8.keep.nbytes == 6 * 16 * 272
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
    for baseline in (False, True):
        assert torch.equal(matmul(m, x, baseline=baseline), matmul(m8, x, baseline=baseline))
    part = matmul(m, x, rows=(0, rows), groups=(1, 6))
    assert torch.equal(part[:, 8:], matmul(m8, x)[:, 8:]) and (part[:, :8] == 0).all()


def test_geglu_matches_torch():
    """Gemma's MLP gate, gelu's tanh form, as sigmoid(2 a) (native/layer_ops.c); the scalar tail
    (1005 = 125 x 8 + 5) and the extremes included."""
    g = torch.Generator().manual_seed(9)
    gate = torch.cat([torch.randn(997, generator=g) * 4, torch.tensor([0.0, -0.0, 10.0, -10.0, 100.0, -100.0, 1e-30, -1e-30])])
    up = torch.randn(1005, generator=g)
    gate_up, out = torch.cat([gate, up]), torch.empty(1005)
    native.library().cf_geglu(gate_up.data_ptr(), 1005, out.data_ptr())
    # atol: for gates below about -4 torch's 1 + tanh(a) cancels to a few float32 steps of 1
    # (values <= 1e-6), where the sigmoid form keeps its relative precision
    torch.testing.assert_close(out, F.gelu(gate, approximate="tanh") * up, rtol=2e-6, atol=1e-6)


def test_a_big_matrix_packed_in_slices_is_the_same_bytes():
    """The embedding is packed a slice of rows at a time (native_model.py): the same bytes."""
    from chatforge.models.native_formats import row_slices

    w = random_blocks(GGML_Q6_K, 100, 256, seed=4)
    slices = row_slices([w], rows=24)
    assert len(slices) == 5
    assert np.array_equal(np.concatenate([pack(s).data for s in slices]), pack([w]).data)
