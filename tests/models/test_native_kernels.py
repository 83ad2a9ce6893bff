"""chatforge's own CPU kernels (models/native/), one operation at a time: the build, the weight
formats' packing and matmuls against exact references, the per-row operations and the paged
attention against torch, results that do not depend on the batch, and the thread pool."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from chatforge.models import native
from chatforge.models.llama import RMSNorm
from chatforge.models.native_formats import F32, Q4_1, Q8_0, pack, quantize_q4_1, quantize_q8_0
from chatforge.models.native_model import _Matrix
from chatforge.models.rotary import apply_rotary


def lib():
    return native.library()


def ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous()
    return t.data_ptr()


# -- the build -------------------------------------------------------------------------------


def test_the_kernels_build_on_this_machine_kind():
    # The project's machines are x86 with AVX2 and a C compiler: the kernels must be there, or
    # every test below (and the default engine backend) would silently test nothing.
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    lib()
    assert native.available()


def _in_subprocess(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_a_missing_compiler_is_a_clear_error(tmp_path):
    code = (
        "from chatforge.models import native\n"
        f"try:\n    native.library({str(tmp_path)!r}, 'no-such-compiler')\n"
        "except native.NativeKernelsUnavailable as e:\n    print('unavailable:', e)\n"
        "print(native.available())\n"
    )
    done = _in_subprocess(code)
    assert done.returncode == 0, done.stderr
    assert "unavailable: no C compiler ('no-such-compiler' not found)" in done.stdout
    assert done.stdout.strip().endswith("False")
    assert list(tmp_path.iterdir()) == []


def test_the_library_is_built_once_into_the_cache_dir(tmp_path):
    code = f"from chatforge.models import native\nprint(native.library({str(tmp_path)!r})._name)\n"
    first = _in_subprocess(code)
    assert first.returncode == 0, first.stderr
    built = list(tmp_path.iterdir())
    assert [p.name for p in built] == [os.path.basename(first.stdout.strip())]
    assert built[0].name.startswith("chatforge-kernels-") and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    second = _in_subprocess(code)
    assert second.stdout == first.stdout
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_an_unwritable_cache_dir_falls_back_to_a_temporary_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = f"from chatforge.models import native\nprint(native.library({str(blocker / 'cache')!r})._name)\n"
    done = _in_subprocess(code, TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / f"chatforge-{os.getuid()}" / "chatforge-kernels-"))


# -- weight formats ----------------------------------------------------------------------------


def grid_weight(fmt: int, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Float weights that lie exactly on the format's grid (as a checkpoint's dequantized values)."""
    if fmt == Q4_1:
        q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
        q[..., 0], q[..., 1] = 0, 15  # each block spans its grid
        d = (torch.rand(n, k // 32, 1, generator=g) * 0.02 + 0.001).half().float()
        m = (-torch.rand(n, k // 32, 1, generator=g) * 0.1).half().float()
        return (q * d + m).reshape(n, k)
    if fmt == Q8_0:
        q = torch.randint(-127, 128, (n, k // 32, 32), generator=g).float()
        q[..., 0] = 127
        d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 0.001).half().float()
        return (q * d).reshape(n, k)
    return torch.randn(n, k, generator=g) * 0.1


def packed(fmt: int, w: torch.Tensor):
    """(the packed matrix, its ctypes description, the float weights the kernel multiplies by)"""
    source = {Q4_1: quantize_q4_1, Q8_0: quantize_q8_0}.get(fmt)
    tensor = source(w) if source else w
    p = pack([tensor])
    assert p.format == fmt
    exact = torch.from_numpy(tensor.dequantize()) if source else w
    m = _Matrix(p.format, p.N, p.K, p.group_bytes, p.data.ctypes.data)
    m.keep = p  # the packed bytes live as long as their description
    return p, m, exact


def matmul(m: _Matrix, x: torch.Tensor, rows=None, groups=None, y=None, baseline: bool = False) -> torch.Tensor:
    M, K = x.shape
    y = torch.zeros(M, m.N) if y is None else y
    scratch = torch.empty(M * K * 3 + 64, dtype=torch.uint8)
    r0, r1 = rows or (0, M)
    g0, g1 = groups or (0, (m.N + 7) // 8)
    lib().cf_test_matmul(ctypes.byref(m), ptr(x), M, r0, r1, g0, g1, ptr(y), ptr(scratch), 0, int(baseline))
    return y


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels see it for the block formats, in float64: 8 bits per block of 32."""
    blocks = x.double().reshape(x.shape[0], -1, 32)
    d = (blocks.abs().amax(-1, keepdim=True).float() / 127).double()
    return (torch.round(blocks / torch.where(d > 0, d, torch.ones_like(d))) * d).reshape(x.shape)


@pytest.mark.parametrize("fmt", [Q4_1, Q8_0, F32])
def test_packing_keeps_every_weight(fmt):
    g = torch.Generator().manual_seed(fmt)
    w = grid_weight(fmt, 37, 96, g)  # 37 columns: the last group of eight is padded
    p, m, exact = packed(fmt, w)
    assert p.data.nbytes == 5 * p.group_bytes
    torch.testing.assert_close(exact, w, rtol=0, atol=1e-6)  # the grid itself is kept
    # the embedding lookup reads a row back out of the packed layout
    out = torch.empty(96)
    for n in (0, 9, 36):
        lib().cf_test_row(ctypes.byref(m), n, ptr(out))
        torch.testing.assert_close(out, exact[n], rtol=0, atol=0)


def test_q4_1_layout_interleaves_eight_columns():
    g = torch.Generator().manual_seed(3)
    q = quantize_q4_1(grid_weight(Q4_1, 16, 64, g))
    p = pack([q])
    raw = q.blocks.reshape(16, 2, 20)
    column, block, c, t = 10, 1, 3, 1  # column 10: group 1, column 2 in it
    group = p.data[p.group_bytes : 2 * p.group_bytes].reshape(2, 160)
    assert group[block, 32 * c + 4 * 2 + t] == raw[column, block, 4 + 4 * c + t]
    assert bytes(group[block, 128 + 4 : 128 + 6]) == bytes(raw[column, block, 0:2])  # d of column 2
    assert bytes(group[block, 144 + 4 : 144 + 6]) == bytes(raw[column, block, 2:4])  # m of column 2


@pytest.mark.parametrize("fmt", [Q4_1, Q8_0])
@pytest.mark.parametrize("rows, k, n", [(1, 576, 960), (3, 64, 37), (9, 1536, 70), (32, 576, 64)])
def test_block_matmul_equals_the_quantized_arithmetic(fmt, rows, k, n):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    _, m, w = packed(fmt, grid_weight(fmt, n, k, g))
    x = torch.randn(rows, k, generator=g)
    x[0, :32] = 0  # an all-zero block (scale 0)
    y = matmul(m, x)
    # float32 accumulation of exact integer block sums: within a few float32 ulps of the magnitudes
    scale = (x.double().abs() @ w.double().abs().t()).max()
    assert float((y.double() - quantized_activations(x) @ w.double().t()).abs().max() / scale) < 1e-6
    # and the 8-bit activations stay within a percent of the float32 product
    assert float((y.double() - x.double() @ w.double().t()).abs().max() / scale) < 0.01


@pytest.mark.parametrize("rows, k, n", [(1, 64, 8), (5, 100, 37), (17, 576, 96)])
def test_f32_matmul_is_the_float_product(rows, k, n):
    g = torch.Generator().manual_seed(rows + k)
    _, m, w = packed(F32, grid_weight(F32, n, k, g))
    x = torch.randn(rows, k, generator=g)
    torch.testing.assert_close(matmul(m, x), x @ w.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", [Q4_1, Q8_0, F32])
def test_a_row_gets_the_same_bits_whatever_rows_and_columns_are_computed_with_it(fmt):
    g = torch.Generator().manual_seed(5)
    _, m, _ = packed(fmt, grid_weight(fmt, 100, 192, g))
    x = torch.randn(11, 192, generator=g)
    whole = matmul(m, x)
    for start, end in [(0, 1), (3, 5), (2, 9), (4, 11)]:  # every row-group variant, rows at other offsets
        assert torch.equal(matmul(m, x[start:end].clone()), whole[start:end])
    # a range of rows and of column groups computes exactly those outputs
    part = matmul(m, x, rows=(2, 7), groups=(3, 11), y=torch.full((11, 100), 7.0))
    assert torch.equal(part[2:7, 24:88], whole[2:7, 24:88])
    assert (part[:2] == 7).all() and (part[7:] == 7).all() and (part[:, :24] == 7).all() and (part[:, 88:] == 7).all()


@pytest.mark.parametrize("fmt", [Q4_1, Q8_0])
def test_every_instruction_set_gives_the_same_bits(fmt):
    """The variant chosen for this CPU (AVX-512 VNNI where present) and the AVX2 one compute the
    same integers, then the same float operations."""
    chosen = lib().cf_select_kernels().decode()
    assert chosen in ("avx2", "avx512vnni")
    g = torch.Generator().manual_seed(11)
    _, m, _ = packed(fmt, grid_weight(fmt, 77, 320, g))
    for rows in (1, 3, 4, 9, 33):
        x = torch.randn(rows, 320, generator=g)
        assert torch.equal(matmul(m, x), matmul(m, x, baseline=True)), (chosen, rows)


# -- per-row operations ------------------------------------------------------------------------


def test_activation_quantization_is_8_bits_per_block():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 96, generator=g) * 5
    x[1, 32:64] = 0
    q = torch.empty(3, 96, dtype=torch.int8)
    d, s = torch.empty(3, 3), torch.empty(3, 3)
    lib().cf_quantize_q8(ptr(x), 3, 96, ptr(q), ptr(d), ptr(s))
    torch.testing.assert_close((q.double().reshape(3, 3, 32) * d.double()[..., None]).reshape(3, 96), quantized_activations(x))
    assert (q.abs().amax(-1) == 127).all() and float(d[1, 1]) == 0.0
    torch.testing.assert_close(s, d * q.reshape(3, 3, 32).float().sum(-1), rtol=0, atol=0)


def test_rms_norm_swiglu_and_rope_match_torch():
    g = torch.Generator().manual_seed(7)
    dim = 584  # not a multiple of 16: the scalar tail runs too
    x = torch.randn(dim, generator=g) * 3
    norm = RMSNorm(dim, 1e-5)
    norm.weight.data = torch.randn(dim, generator=g)
    out = torch.empty(dim)
    lib().cf_rms_norm(ptr(x), ptr(norm.weight.data), dim, 1e-5, ptr(out))
    with torch.inference_mode():
        torch.testing.assert_close(out, norm(x[None])[0], rtol=2e-6, atol=1e-6)

    gate = torch.cat([torch.randn(1000, generator=g) * 4, torch.tensor([0.0, -0.0, 80.0, -80.0, 100.0, -100.0, 1e-30, -1e-30])])
    up = torch.randn(1008, generator=g)
    out = torch.empty(1008)
    gate_up = torch.cat([gate, up])
    lib().cf_swiglu(ptr(gate_up), 1008, ptr(out))
    torch.testing.assert_close(out, F.silu(gate) * up, rtol=1e-6, atol=1e-30)

    head = torch.randn(64, generator=g)
    angles = torch.rand(32, generator=g) * 100
    out = torch.empty(64)
    cos, sin = angles.cos(), angles.sin()
    lib().cf_rotate_head(ptr(head), ptr(cos), ptr(sin), 64, ptr(out))
    both = torch.cat([angles, angles])
    torch.testing.assert_close(out, apply_rotary(head[None, None], both.cos()[None], both.sin()[None])[0, 0], rtol=0, atol=0)


# -- attention ---------------------------------------------------------------------------------


class _AttnArgs(ctypes.Structure):
    _fields_ = [
        ("q", ctypes.c_void_p), ("out", ctypes.c_void_p), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p), ("block_size", ctypes.c_int64), ("n_heads", ctypes.c_int64),
        ("n_kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("window", ctypes.c_int64), ("scale", ctypes.c_float),
    ]


class PagedKV:
    """A float16 cache [blocks, Hkv, block_size, D] holding one sequence's keys and values in
    shuffled blocks, the rest NaN (a read of an unwritten slot would show)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, block_size: int, g: torch.Generator):
        n, Hkv, D = k.shape
        blocks = -(-n // block_size)
        self.table = torch.randperm(blocks + 5, generator=g)[:blocks].to(torch.int32)
        self.k = torch.full((blocks + 5, Hkv, block_size, D), float("nan"), dtype=torch.float16)
        self.v = self.k.clone()
        for p in range(n):
            self.k[self.table[p // block_size], :, p % block_size] = k[p].half()
            self.v[self.table[p // block_size], :, p % block_size] = v[p].half()
        self.block_size = block_size

    def attend(self, q: torch.Tensor, pos0: int, window: int = 0, run: tuple[int, int] | None = None) -> torch.Tensor:
        """q [n, H, D] at positions pos0.. -> out [n, H, D], each kv head a task over the run."""
        n, H, D = q.shape
        Hkv = self.k.shape[1]
        q = q.contiguous()
        out = torch.full_like(q, float("nan"))
        args = _AttnArgs(ptr(q), ptr(out), ptr(self.k), ptr(self.v), ptr(self.table), self.block_size, H, Hkv, D, window, D**-0.5)
        start, count = run or (0, n)
        scratch = torch.empty(lib().cf_attend_scratch_floats(D, H // Hkv, max(count, 1)))
        for kvh in range(Hkv):
            lib().cf_attend(ctypes.byref(args), kvh, start, pos0 + start, count, ptr(scratch))
        return out


def sdpa_reference(q, k, v, pos0: int, window: int = 0) -> torch.Tensor:
    """Causal (windowed) attention of q [n, H, D] at positions pos0.. over k, v [L, Hkv, D] (as float16)."""
    n, H, D = q.shape
    L = k.shape[0]
    kpos = torch.arange(L)[None, :]
    qpos = (pos0 + torch.arange(n))[:, None]
    allowed = kpos <= qpos
    if window:
        allowed &= qpos - kpos < window
    k, v = k.half().float().transpose(0, 1), v.half().float().transpose(0, 1)  # [Hkv, L, D]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], attn_mask=allowed, enable_gqa=True)
    return out[0].transpose(0, 1)


@pytest.mark.parametrize("length, window, block_size", [(1, 0, 16), (75, 0, 16), (150, 0, 5), (150, 40, 16), (33, 7, 4)])
def test_attention_matches_sdpa_over_the_float16_cache(length, window, block_size):
    g = torch.Generator().manual_seed(length + window)
    H, Hkv, D = 9, 3, 64
    k, v = torch.randn(length, Hkv, D, generator=g), torch.randn(length, Hkv, D, generator=g)
    q = torch.randn(length, H, D, generator=g) * 2
    kv = PagedKV(k, v, block_size, g)
    out = kv.attend(q, 0, window)
    torch.testing.assert_close(out, sdpa_reference(q, k, v, 0, window), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("window", [0, 7, 40])
def test_a_query_gets_the_same_bits_decoded_alone_or_inside_any_prefill_run(window):
    g = torch.Generator().manual_seed(9)
    H, Hkv, D, L = 6, 2, 32, 100
    k, v = torch.randn(L, Hkv, D, generator=g), torch.randn(L, Hkv, D, generator=g)
    q = torch.randn(L, H, D, generator=g)
    kv = PagedKV(k, v, 16, g)
    whole = kv.attend(q, 0, window)  # every query in one run
    for start, count in [(0, 1), (99, 1), (37, 1), (30, 16), (64, 36), (5, 3)]:
        part = kv.attend(q, 0, window, run=(start, count))
        assert torch.equal(part[start : start + count], whole[start : start + count]), (start, count)


# -- the thread pool ---------------------------------------------------------------------------


@pytest.mark.parametrize("threads, tasks", [(1, 5), (2, 1), (3, 7), (4, 64), (8, 3)])
def test_the_pool_runs_every_task_of_every_job_exactly_once(threads, tasks):
    jobs = 300
    counts = (ctypes.c_int64 * tasks)()
    assert lib().cf_test_pool(threads, jobs, tasks, counts) == 0
    assert list(counts) == [jobs] * tasks


def test_the_pool_stays_correct_beside_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        counts = (ctypes.c_int64 * 13)()
        assert lib().cf_test_pool(2, 2000, 13, counts) == 0
        assert list(counts) == [2000] * 13
    finally:
        busy.kill()
        busy.wait()
