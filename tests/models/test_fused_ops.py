"""The fused layer operations (models/fused_ops.py, native/layer_ops.c) against torch's own:
the same bits where the arithmetic is the same, a few ulps where only the order differs, and
rows that do not depend on the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatforge.models import fused_ops
from chatforge.models.llama import RMSNorm
from chatforge.models.rotary import apply_rotary


@pytest.mark.parametrize("rows", [1, 5, 32])
@pytest.mark.parametrize("with_add", [False, True])
def test_add_rms_norm_is_the_residual_add_then_rmsnorm(rows, with_add):
    torch.manual_seed(rows)
    dim = 584  # not a multiple of 16: the scalar tail runs too
    x, add = torch.randn(rows, dim) * 3, torch.randn(rows, dim)
    norm = RMSNorm(dim, 1e-5)
    norm.weight.data = torch.randn(dim)
    expected_x = x + add if with_add else x.clone()
    with torch.inference_mode():
        expected = norm(expected_x)
        out = fused_ops.add_rms_norm(x, add if with_add else None, norm.weight, norm.eps)
    torch.testing.assert_close(x, expected_x, rtol=0, atol=0)  # the residual stream, updated in place
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-6)


def test_swiglu_is_silu_times_up_over_the_whole_range():
    torch.manual_seed(0)
    gate = torch.cat([torch.randn(3, 1000) * 4, torch.tensor([[0.0, -0.0, 80.0, -80.0, 100.0, -100.0, 1e-30, -1e-30] * 125])])
    up = torch.randn(4, 1000)
    out = fused_ops.swiglu(torch.cat([gate, up], dim=1).contiguous())
    torch.testing.assert_close(out, F.silu(gate) * up, rtol=1e-6, atol=1e-30)


def test_rotary_cache_write_rotates_like_torch_and_writes_only_its_slots():
    torch.manual_seed(1)
    rows, heads, kv_heads, dim = 3, 6, 2, 64
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(rows, dim // 2) * 100
    cos, sin = torch.cat([angles, angles], 1).cos(), torch.cat([angles, angles], 1).sin()
    k_cache, v_cache = torch.full((40, kv_heads, dim), 7.0), torch.full((40, kv_heads, dim), 7.0)
    slots = torch.tensor([33, 2, 17])
    before = qkv.clone()
    q = fused_ops.rotary_cache_write(qkv, cos, sin, slots, k_cache, v_cache, heads)
    view = qkv.view(rows, heads + 2 * kv_heads, dim)
    torch.testing.assert_close(q, apply_rotary(view[:, :heads], cos, sin), rtol=0, atol=0)
    torch.testing.assert_close(k_cache[slots], apply_rotary(view[:, heads : heads + kv_heads], cos, sin), rtol=0, atol=0)
    torch.testing.assert_close(v_cache[slots], view[:, heads + kv_heads :], rtol=0, atol=0)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[slots] = False
    assert (k_cache[untouched] == 7).all() and (v_cache[untouched] == 7).all()
    assert torch.equal(qkv, before)


def test_a_row_gets_the_same_bits_alone_or_in_a_batch():
    torch.manual_seed(2)
    x, add, weight, gate_up = torch.randn(9, 576), torch.randn(9, 576), torch.randn(576), torch.randn(9, 3072)
    batch = fused_ops.add_rms_norm(x.clone(), add, weight, 1e-5)
    alone = fused_ops.add_rms_norm(x[4:5].clone(), add[4:5].clone(), weight, 1e-5)
    assert torch.equal(batch[4:5], alone)
    assert torch.equal(fused_ops.swiglu(gate_up)[4:5], fused_ops.swiglu(gate_up[4:5].clone()))


def test_wrong_shapes_and_layouts_are_refused():
    weight = torch.ones(8)
    with pytest.raises(ValueError, match="weight"):
        fused_ops.add_rms_norm(torch.ones(2, 16), None, weight, 1e-5)
    with pytest.raises(ValueError, match="x"):
        fused_ops.add_rms_norm(torch.ones(8, 2).t(), None, weight, 1e-5)  # not contiguous
    with pytest.raises(ValueError, match="gate_up"):
        fused_ops.swiglu(torch.ones(2, 7))
    with pytest.raises(ValueError, match="slots"):
        fused_ops.rotary_cache_write(
            torch.ones(1, 4 * 8), torch.ones(1, 8), torch.ones(1, 8), torch.tensor([0], dtype=torch.int32),
            torch.zeros(4, 1, 8), torch.zeros(4, 1, 8), 2,
        )
