"""Inference-only linear layers: several projections fused into one matmul, and an optional
int8 weight-only copy for the small-M matmuls of decoding.

Why fuse: a decode step is ~80% matmuls of a few rows each; q/k/v (and gate/up) read the same
input, so one [q + 2 kv, d] matmul replaces three and the output is split with views.

Why int8: at a few rows a matmul is bound by reading its weights, and the int8 copy is a
quarter of the float32 bytes (the lm_head of a 49k vocabulary: 113 MB -> 28 MB). The weights
are quantized symmetrically per output channel, w ~= scale[n] * q[n, k] with q in [-127, 127],
and multiplied by `aten._weight_int8pack_mm`, which wants bfloat16 activations and scales
(with float32 activations that kernel is several times slower than float32 MKL). Rows above
`int8_max_rows` take the float32 weight instead: there the matmul is compute-bound and MKL's
sgemm is faster, so both copies are kept (+25% weight memory). The int8 path rounds the
activations to bfloat16, so its results depend on the row count: it is not batch-invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_MODES = ("fp32", "int8")
# Rows at or below which the int8 copy is used (benchmarks/RESULTS.md, "Offline decode").
DEFAULT_INT8_MAX_ROWS = 8


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float -> (q int8 [N, K], scales float32 [N]) with weight ~= scales[:, None] * q."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # an all-zero row keeps q = 0
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


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

    def set_int8(self, max_rows: int) -> None:
        """Use an int8 copy for inputs of at most `max_rows` rows; 0 drops the copy (float32 only)."""
        if max_rows < 0:
            raise ValueError(f"int8 max_rows must be >= 0, got {max_rows}")
        if max_rows and self.weight.device.type != "cpu":
            raise ValueError("int8 weights are implemented for the CPU only")
        if max_rows and self.weight_int8 is None:
            q, scales = quantize_int8(self.weight)
            self.weight_int8, self.scales = q, scales.to(torch.bfloat16)
        elif not max_rows:
            self.weight_int8 = self.scales = None
        self.int8_max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_int8 is not None and x.dim() == 2 and x.shape[0] <= self.int8_max_rows:
            y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight_int8, self.scales).to(x.dtype)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """y [M, sum(sizes)] -> one view per fused projection."""
        return y.split(self.sizes, dim=-1)
