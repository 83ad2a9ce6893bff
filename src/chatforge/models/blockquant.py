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


def quantize_q4_1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] -> the kernel's Q4_1 layout: (qs uint8 [N, K / 32, 16], d float32 [N, K / 32],
    m float32 [K / 32, N], transposed); byte j of a block holds element j in its low nibble and
    element j + 16 in its high nibble."""
    q, d, m = q4_1_grid(weight)
    q = q.to(torch.uint8)
    return (q[..., :16] | (q[..., 16:] << 4)).contiguous(), d.contiguous(), m.t().contiguous()


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (qs int8 [N, K / 32, 32], d float32 [N, K / 32]) with w ~= d * q, d = max|w| / 127
    per block (a Q8_0 checkpoint's grid is recovered: its largest |q| in a block is 127)."""
    groups = _blocks(weight)
    d = groups.abs().amax(-1) / 127
    q = torch.round(groups / torch.where(d > 0, d, torch.ones_like(d))[..., None]).clamp_(-127, 127)
    return q.to(torch.int8).contiguous(), d.contiguous()


def _check_input(x: torch.Tensor, K: int) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != K or x.device.type != "cpu":
        raise ValueError(f"expected a CPU input of shape [M, {K}], got {tuple(x.shape)} on {x.device}")
    return x.float().contiguous()


def q4_1_matmul(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [M, K] float -> x @ W.T float32 [M, N], W in quantize_q4_1's layout, x quantized per block."""
    lib = native.library()
    N, K = qs.shape[0], qs.shape[1] * BLOCK
    x = _check_input(x, K)
    y = torch.empty(x.shape[0], N, dtype=torch.float32)
    if lib.q4_1_matmul(x.data_ptr(), x.shape[0], K, qs.data_ptr(), d.data_ptr(), m.data_ptr(), N, y.data_ptr()):
        raise MemoryError("q4_1_matmul: no memory for the quantized activations")
    return y


def q8_0_matmul(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x [M, K] float -> x @ W.T float32 [M, N], W in quantize_q8_0's layout, x quantized per block."""
    lib = native.library()
    N, K = qs.shape[0], qs.shape[1] * BLOCK
    x = _check_input(x, K)
    y = torch.empty(x.shape[0], N, dtype=torch.float32)
    if lib.q8_0_matmul(x.data_ptr(), x.shape[0], K, qs.data_ptr(), d.data_ptr(), N, y.data_ptr()):
        raise MemoryError("q8_0_matmul: no memory for the quantized activations")
    return y
