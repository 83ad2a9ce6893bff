"""Inference-only linear layers: several projections fused into one matmul, and an optional
low-bit copy for the small-M matmuls of decoding: int8 or int4 weight-only (torch's kernels), or
block-quantized weights and activations (chatforge's kernels, blockquant.py).

Why fuse: a decode step is ~80% matmuls of a few rows each; q/k/v (and gate/up) read the same
input, so one [q + 2 kv, d] matmul replaces three and the output is split with views.

Why int8: at a few rows a matmul is bound by reading its weights, and the int8 copy is a
quarter of the float32 bytes (the lm_head of a 49k vocabulary: 113 MB -> 28 MB). The weights
are quantized symmetrically per output channel, w ~= scale[n] * q[n, k] with q in [-127, 127],
and multiplied by `aten._weight_int8pack_mm`, which wants bfloat16 activations and scales
(with float32 activations that kernel is several times slower than float32 MKL). Rows above
`max_rows` take the float32 weight instead: there the matmul is compute-bound and MKL's
sgemm is faster, so both copies are kept (+25% weight memory). The int8 path rounds the
activations to bfloat16, so its results depend on the row count: it is not batch-invariant.

Why int4: half the bytes of int8 again, and torch's `_weight_int4pack_mm_for_cpu` is the fastest
kernel for one to sixteen rows on this project's CPU (benchmarks/RESULTS.md); the float32 weight
is kept for larger steps (+12.5% weight memory). Input sizes must be multiples of 32. The weight is
quantized in groups of 32 input channels, asymmetrically: w ~= (q - 8) * scale + zero with q in
[0, 15] and one (scale, zero) per group and output channel. GGUF's Q4_1 stores exactly that form
(w = d * q + m in blocks of 32), so a Q4_1 checkpoint's grid is recovered from its dequantized
values: each block's minimum is m and its maximum 15 d + m. What is not exact is the kernel's
bfloat16 scale, zero and activations (the same rounding as the int8 path, and the same
consequence for batch invariance).

Why block quantization ("q4" mode: Q4_1 layers, a Q8_0 lm_head, 8-bit activations per block of
32, llama.cpp's arithmetic): the dot product of a block is integer, so a weight costs half a byte
of reading and a few instructions, where torch's int4 kernel converts every weight to bfloat16.
Fastest of all modes at every decode batch size measured (1 to 32 rows), and faster than MKL's
float32 sgemm at every row count measured (1 to 512: 0.2-0.8 of its time), so prefill takes it too;
accuracy in tests/models/test_packed_linear.py. A row's result does not depend on the other rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chatforge.models import blockquant

WEIGHT_MODES = ("fp32", "int8", "int4", "q4")
# Rows at or below which the low-bit copy is used: where its kernel beat MKL's float32 sgemm on
# this project's CPU (int8 up to 8 rows; int4 up to ~20, e.g. 54 vs 79 ms per step of 16 rows;
# q4 at every row count: no limit).
DEFAULT_MAX_ROWS = {"int8": 8, "int4": 16, "q4": 1 << 30}
INT4_GROUP_SIZE = 32


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float -> (q int8 [N, K], scales float32 [N]) with weight ~= scales[:, None] * q."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # an all-zero row keeps q = 0
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float -> (q int32 [N, K] in [0, 15], scales_and_zeros float32 [K / group, N, 2])
    with weight[n, k] ~= (q[n, k] - 8) * scale[k // group, n] + zero[k // group, n]: the Q4_1 grid
    (blockquant.q4_1_grid) in the form torch's int4 kernel takes."""
    if group_size != blockquant.BLOCK:
        raise ValueError(f"int4 groups are {blockquant.BLOCK} input channels, got {group_size}")
    q, scale, low = blockquant.q4_1_grid(weight)  # [N, G, 32], [N, G], [N, G]
    zero = low + 8 * scale
    return q.reshape(weight.shape), torch.stack([scale.t(), zero.t()], dim=-1).contiguous()


class PackedLinear(nn.Module):
    """y = x @ weight.T + bias for x [M, K]; the weight [N, K] may be the concatenation of several
    projections (split the output with `split`). Holds buffers, not parameters: inference only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, sizes: list[int] | None = None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.sizes = list(sizes) if sizes is not None else [weight.shape[0]]
        self.int8_max_rows = 0  # 0: int8 off
        self.weight_int8: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None
        self.int4_max_rows = 0  # 0: int4 off
        self.weight_int4: torch.Tensor | None = None  # the kernel's packed layout
        self.scales_and_zeros: torch.Tensor | None = None  # bfloat16 [K / group, N, 2]
        self.block_max_rows = 0  # 0: block quantization off
        self.block_format: str | None = None  # "q4_1" or "q8_0" (blockquant.py)
        self.block_weight: tuple[torch.Tensor, ...] = ()  # the kernel's layout

    @classmethod
    def fuse(cls, linears: list[nn.Linear]) -> PackedLinear:
        """One PackedLinear computing every one of `linears` (same input size), outputs side by side."""
        weight = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 else linears[0].weight.detach()
        biases = [lin.bias for lin in linears]
        if all(b is None for b in biases):
            bias = None
        else:
            bias = torch.cat([
                b.detach() if b is not None else torch.zeros(lin.out_features, dtype=weight.dtype, device=weight.device)
                for b, lin in zip(biases, linears)
            ])
        return cls(weight, bias, [lin.out_features for lin in linears])

    def _check_low_bit(self, kind: str, max_rows: int) -> None:
        if max_rows < 0:
            raise ValueError(f"{kind} max_rows must be >= 0, got {max_rows}")
        if max_rows and self.weight.device.type != "cpu":
            raise ValueError(f"{kind} weights are implemented for the CPU only")

    def set_int8(self, max_rows: int) -> None:
        """Use an int8 copy for inputs of at most `max_rows` rows; 0 drops the copy (float32 only)."""
        self._check_low_bit("int8", max_rows)
        if max_rows and self.weight_int8 is None:
            q, scales = quantize_int8(self.weight)
            self.weight_int8, self.scales = q, scales.to(torch.bfloat16)
        elif not max_rows:
            self.weight_int8 = self.scales = None
        self.int8_max_rows = max_rows

    def set_int4(self, max_rows: int) -> None:
        """Use an int4 copy for inputs of at most `max_rows` rows (before int8, if both are set);
        0 drops the copy."""
        self._check_low_bit("int4", max_rows)
        if max_rows and self.weight_int4 is None:
            q, scales_and_zeros = quantize_int4(self.weight)
            # 2: the packing's inner K tiles (the value measured and tested here).
            self.weight_int4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
            self.scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
        elif not max_rows:
            self.weight_int4 = self.scales_and_zeros = None
        self.int4_max_rows = max_rows

    def set_block_quant(self, block_format: str | None, max_rows: int) -> None:
        """Use chatforge's block-quantized kernels (blockquant.py; weights in `block_format`,
        "q4_1" or "q8_0", activations in 8 bits per block) for inputs of at most `max_rows` rows,
        before any other copy; None or 0 rows drops them."""
        if block_format not in (None, "q4_1", "q8_0"):
            raise ValueError(f"block_format must be q4_1 or q8_0, got {block_format!r}")
        self._check_low_bit(block_format or "block", max_rows)
        if not max_rows or block_format is None:
            self.block_format, self.block_weight, self.block_max_rows = None, (), 0
            return
        blockquant.ensure_available()
        if block_format != self.block_format:
            quantize = blockquant.quantize_q4_1 if block_format == "q4_1" else blockquant.quantize_q8_0
            self.block_weight = quantize(self.weight)
            self.block_format = block_format
        self.block_max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0] if x.dim() == 2 else None
        if rows is not None and self.block_weight and rows <= self.block_max_rows and x.dtype == torch.float32:
            matmul = blockquant.q4_1_matmul if self.block_format == "q4_1" else blockquant.q8_0_matmul
            y = matmul(x, *self.block_weight, self.weight.shape[0])
            return y if self.bias is None else y + self.bias
        if rows is not None and self.weight_int4 is not None and rows <= self.int4_max_rows:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.to(torch.bfloat16), self.weight_int4, INT4_GROUP_SIZE, self.scales_and_zeros
            )
        elif rows is not None and self.weight_int8 is not None and rows <= self.int8_max_rows:
            y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight_int8, self.scales)
        else:
            return F.linear(x, self.weight, self.bias)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """y [M, sum(sizes)] -> one view per fused projection."""
        return y.split(self.sizes, dim=-1)
