"""Block-quantized matmuls on the CPU: chatforge's own AVX2 kernels (native/blockquant.c).

Weights and activations are quantized in blocks of 32 along the input dimension, as GGUF's
Q4_1 / Q8_0 formats and llama.cpp's CPU backend do: the layers' weights in Q4_1 (a Q4_1
checkpoint's own grid, recovered exactly), the lm_head in Q8_0 (GGUF's usual embedding format),
the activations in 8 bits per block on every call. A block's dot product is integer arithmetic
times one scale, which is what makes a decode step cheap: at one row a float32 matmul is bound by
reading 4 bytes per weight, torch's int4 kernel by unpacking them to bfloat16 (about 3 GB/s per
thread here), these kernels read half a byte per weight and spend a few integer instructions on
each block (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch

from chatforge.models import native

BLOCK = 32


def ensure_available() -> None:
    """Build and load the kernels now; native.NativeKernelsUnavailable says why they cannot run."""
    native.library()


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    N, K = weight.shape
    if K % BLOCK:
        raise ValueError(f"block quantization needs the input size ({K}) to be a multiple of {BLOCK}")
    return weight.detach().float().reshape(N, K // BLOCK, BLOCK)


def q4_1_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q [N, K / 32, 32] int32 in [0, 15], d [N, K / 32], m [N, K / 32]) with
    w ~= d * q + m per block. A block's minimum is m and its maximum 15 d + m, so weights that
    already lie on a Q4_1 grid (a Q4_1 checkpoint's dequantized values) get that grid back."""
    groups = _blocks(weight)
    low, high = groups.amin(-1), groups.amax(-1)
    d = (high - low) / 15
    d = torch.where(d > 0, d, torch.ones_like(d))  # a constant block: q = 0, w = m
    q = torch.round((groups - low[..., None]) / d[..., None]).clamp_(0, 15).to(torch.int32)
    return q, d, low


def _interleave(values: torch.Tensor) -> torch.Tensor:
    """[N, K / 32, 32] per-column block values -> [N8 / 8, K / 32, 8 * 32]: for each group of eight
    columns and each block, 4 positions of column 0, the same 4 of column 1, ... of column 7, then
    the next 4 positions (native/blockquant.c's layout). N is padded to N8, a multiple of 8, with
    zeros."""
    N, nb, width = values.shape
    padded = -(-N // 8) * 8
    if padded != N:
        values = torch.cat([values, values.new_zeros(padded - N, nb, width)])
    groups = values.reshape(padded // 8, 8, nb, width // 4, 4)  # [G, column, block, chunk, 4]
    return groups.permute(0, 2, 3, 1, 4).reshape(padded // 8, nb, 8 * width).contiguous()


def _interleave_scales(scales: torch.Tensor) -> torch.Tensor:
    """[N, K / 32] -> [N8 / 8, K / 32, 8] (column n of group g at [g, :, n % 8]), padded with zeros."""
    N, nb = scales.shape
    padded = -(-N // 8) * 8
    if padded != N:
        scales = torch.cat([scales, scales.new_zeros(padded - N, nb)])
    return scales.reshape(padded // 8, 8, nb).transpose(1, 2).contiguous()


def _deinterleave_scales(scales: torch.Tensor, N: int) -> torch.Tensor:
    """_interleave_scales' inverse: [N8 / 8, K / 32, 8] -> [N, K / 32, 1]."""
    G, nb, _ = scales.shape
    return scales.transpose(1, 2).reshape(G * 8, nb)[:N, :, None]


def _deinterleave(packed: torch.Tensor, N: int) -> torch.Tensor:
    """_interleave's inverse: [N8 / 8, K / 32, 8 * width] -> [N, K / 32, width]."""
    G, nb, size = packed.shape
    width = size // 8
    groups = packed.reshape(G, nb, width // 4, 8, 4).permute(0, 3, 1, 2, 4)  # [G, column, block, chunk, 4]
    return groups.reshape(G * 8, nb, width)[:N]


def quantize_q4_1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> the kernel's Q4_1 layout (qs uint8 [N8 / 8, K / 32, 128], d and m float32
    [N8 / 8, K / 32, 8]): element j of a block in the low nibble, element j + 16 in the high nibble,
    eight columns interleaved (_interleave)."""
    q, d, m = q4_1_grid(weight)
    q = q.to(torch.uint8)
    nibbles = q[..., :16] | (q[..., 16:] << 4)  # [N, K / 32, 16]
    return _interleave(nibbles), _interleave_scales(d), _interleave_scales(m)


def dequantize_q4_1(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, N: int) -> torch.Tensor:
    """quantize_q4_1's inverse: the [N, K] weights the kernel multiplies by."""
    nibbles = _deinterleave(qs, N)
    q = torch.cat([nibbles & 0xF, nibbles >> 4], dim=-1).float()  # [N, K / 32, 32]
    return (q * _deinterleave_scales(d, N) + _deinterleave_scales(m, N)).reshape(N, -1)


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> the kernel's Q8_0 layout (qs int8 [N8 / 8, K / 32, 256], d float32
    [N8 / 8, K / 32, 8]) with w ~= d * q, d = max|w| / 127 per block (a Q8_0 checkpoint's grid is
    recovered: its largest |q| in a block is 127)."""
    groups = _blocks(weight)
    d = groups.abs().amax(-1) / 127
    q = torch.round(groups / torch.where(d > 0, d, torch.ones_like(d))[..., None]).clamp_(-127, 127)
    return _interleave(q.to(torch.int8)), _interleave_scales(d)


def dequantize_q8_0(qs: torch.Tensor, d: torch.Tensor, N: int) -> torch.Tensor:
    """quantize_q8_0's inverse: the [N, K] weights the kernel multiplies by."""
    return (_deinterleave(qs, N).float() * _deinterleave_scales(d, N)).reshape(N, -1)


def _check_input(x: torch.Tensor, qs: torch.Tensor, N: int) -> torch.Tensor:
    K = qs.shape[1] * BLOCK
    if x.dim() != 2 or x.shape[1] != K or x.device.type != "cpu":
        raise ValueError(f"expected a CPU input of shape [M, {K}], got {tuple(x.shape)} on {x.device}")
    if not (qs.shape[0] - 1) * 8 < N <= qs.shape[0] * 8:  # the kernel reads ceil(N / 8) column groups
        raise ValueError(f"N={N} does not match the weights' {qs.shape[0]} groups of eight columns")
    return x.float().contiguous()


def q4_1_matmul(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, N: int) -> torch.Tensor:
    """x [M, K] float -> x @ W.T float32 [M, N], W in quantize_q4_1's layout, x quantized per block."""
    lib = native.library()
    x = _check_input(x, qs, N)
    K, y = x.shape[1], torch.empty(x.shape[0], N, dtype=torch.float32)
    if lib.q4_1_matmul(x.data_ptr(), x.shape[0], K, qs.data_ptr(), d.data_ptr(), m.data_ptr(), N, y.data_ptr()):
        raise MemoryError("q4_1_matmul: no memory for the quantized activations")
    return y


def q8_0_matmul(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, N: int) -> torch.Tensor:
    """x [M, K] float -> x @ W.T float32 [M, N], W in quantize_q8_0's layout, x quantized per block."""
    lib = native.library()
    x = _check_input(x, qs, N)
    K, y = x.shape[1], torch.empty(x.shape[0], N, dtype=torch.float32)
    if lib.q8_0_matmul(x.data_ptr(), x.shape[0], K, qs.data_ptr(), d.data_ptr(), N, y.data_ptr()):
        raise MemoryError("q8_0_matmul: no memory for the quantized activations")
    return y
