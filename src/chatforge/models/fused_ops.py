"""A decoder layer's small operations, each one call into chatforge's C kernels (native/layer_ops.c).

At decode batch sizes a layer's work between its matmuls is a few hundred floats per row, and in
torch some 40 operator calls of a few microseconds each: about half of a single-stream step with
q4 weights (benchmarks/RESULTS.md). Here they are four calls per layer:

- add_rms_norm: the residual add and the RMSNorm after it (the residual stream updated in place);
- rotary_cache_write: RoPE on q and k, k and v written to the KV cache, q returned contiguous
  (decode steps, whose attention then reads the cache in place);
- swiglu: silu(gate) * up.

Used where the model runs a step with `AttentionMetadata.native_kernels` (the engine without batch
invariance) on float32 CPU tensors. Each row is computed on its own: results do not depend on the
batch. Against torch's operators: the same bits for RoPE, the add and the cache write; RMSNorm and
SwiGLU within a few float32 ulps (another summation order; a polynomial exp).
"""

from __future__ import annotations

import torch

from chatforge.models import native


def applies(x: torch.Tensor) -> bool:
    """Whether the fused kernels can run on activations like `x` here."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and native.available()


def _check(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if t.dtype != torch.float32 or not t.is_contiguous() or tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected a contiguous float32 tensor of shape {shape}, got {t.dtype} {tuple(t.shape)}")


def add_rms_norm(x: torch.Tensor, add: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [M, D] += add (when given, in place); returns weight * x / rms(x), a new [M, D] tensor."""
    M, D = x.shape
    _check(x, "x", (M, D))
    _check(weight, "weight", (D,))
    if add is not None:
        _check(add, "add", (M, D))
    out = torch.empty_like(x)
    native.library().add_rms_norm(x.data_ptr(), None if add is None else add.data_ptr(), weight.data_ptr(), M, D, eps, out.data_ptr())
    return out


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [M, 2F] (gate, then up) -> silu(gate) * up [M, F]."""
    M, F2 = gate_up.shape
    _check(gate_up, "gate_up", (M, F2 - F2 % 2))
    out = torch.empty(M, F2 // 2, dtype=torch.float32)
    native.library().swiglu(gate_up.data_ptr(), M, F2 // 2, out.data_ptr())
    return out


def rotary_cache_write(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int,
) -> torch.Tensor:
    """qkv [M, (H + 2 Hkv) D]; cos, sin [M, D]; slots int64 [M]; caches [slots, Hkv, D] -> the rotated
    q [M, H, D]; the rotated k and the v are written to the caches at each row's slot."""
    M = qkv.shape[0]
    _, Hkv, D = k_cache.shape
    _check(qkv, "qkv", (M, (num_heads + 2 * Hkv) * D))
    _check(cos, "cos", (M, D))
    _check(sin, "sin", (M, D))
    _check(k_cache, "k_cache", tuple(k_cache.shape))
    _check(v_cache, "v_cache", tuple(k_cache.shape))
    if slots.dtype != torch.int64 or not slots.is_contiguous() or tuple(slots.shape) != (M,) or D % 2:
        raise ValueError(f"slots: expected contiguous int64 [{M}] and an even head size, got {slots.dtype} {tuple(slots.shape)}, D={D}")
    q = torch.empty(M, num_heads, D, dtype=torch.float32)
    native.library().rotary_cache_write(
        qkv.data_ptr(), M, num_heads, Hkv, D, cos.data_ptr(), sin.data_ptr(), slots.data_ptr(),
        k_cache.data_ptr(), v_cache.data_ptr(), q.data_ptr(),
    )
    return q
