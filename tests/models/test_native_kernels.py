"""chatforge's own CPU kernels (models/native/): the build, the block-quantized matmuls against
exact references, and results that do not depend on the batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from chatforge.models import blockquant, native


def test_the_kernels_build_on_this_machine_kind():
    # The project's machines are x86 with AVX2 and a C compiler: the kernels must be there, or
    # every test below (and the fast engine configuration) would silently test nothing.
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    native.library()
    assert native.available()


def test_a_missing_compiler_is_a_clear_error(tmp_path):
    code = (
        "from chatforge.models import native\n"
        "try:\n    native.library()\nexcept native.NativeKernelsUnavailable as e:\n    print('unavailable:', e)\n"
        "print(native.available())\n"
    )
    env = {**os.environ, "CC": "no-such-compiler", "CHATFORGE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unavailable: no C compiler ('no-such-compiler' not found)" in done.stdout
    assert done.stdout.strip().endswith("False")
    assert list(tmp_path.iterdir()) == []


def test_the_library_is_built_once_into_the_cache_dir(tmp_path):
    code = "from chatforge.models import native\nprint(native.library()._name)\n"
    env = {**os.environ, "CHATFORGE_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    built = list(tmp_path.iterdir())
    assert [p.name for p in built] == [os.path.basename(first.stdout.strip())]
    assert built[0].name.startswith("chatforge-kernels-") and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert second.stdout == first.stdout
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_an_unwritable_cache_dir_falls_back_to_a_temporary_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = "from chatforge.models import native\nprint(native.library()._name)\n"
    env = {**os.environ, "CHATFORGE_CACHE_DIR": str(blocker / "cache"), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / f"chatforge-{os.getuid()}" / "chatforge-kernels-"))


def q4_1_weight(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Weights on a Q4_1 grid (w = d * q + m per block of 32), as a Q4_1 checkpoint dequantizes."""
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # each block spans its grid, as quantized blocks do
    d = torch.rand(n, k // 32, 1, generator=g) * 0.02 + 0.001
    m = -torch.rand(n, k // 32, 1, generator=g) * 0.1
    return (q * d + m).reshape(n, k)


def q8_0_weight(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    q = torch.randint(-127, 128, (n, k // 32, 32), generator=g).float()
    q[..., 0] = 127
    d = torch.rand(n, k // 32, 1, generator=g) * 0.01 + 0.001
    return (q * d).reshape(n, k)


def test_quantize_q4_1_recovers_the_grid():
    g = torch.Generator().manual_seed(1)
    w = q4_1_weight(37, 96, g)  # 37 columns: the last group of eight is padded
    qs, d, m = blockquant.quantize_q4_1(w)
    assert qs.dtype == torch.uint8 and qs.shape == (5, 3, 128) and d.shape == m.shape == (5, 3, 8)
    torch.testing.assert_close(blockquant.dequantize_q4_1(qs, d, m, 37), w, rtol=0, atol=1e-6)
    # the layout itself: byte 32 c + 4 i + t of a block holds positions 4 c + t (low nibble) and
    # 16 + 4 c + t (high) of column i of the group
    q, _, _ = blockquant.q4_1_grid(w)
    column, block, c, t = 10, 2, 3, 1  # column 10: group 1, column 2 in it
    byte = int(qs[1, block, 32 * c + 4 * 2 + t])
    assert (byte & 0xF, byte >> 4) == (int(q[column, block, 4 * c + t]), int(q[column, block, 16 + 4 * c + t]))
    assert (d[4, :, 5:] == 0).all() and (m[4, :, 5:] == 0).all()


def test_quantize_q8_0_recovers_the_grid():
    g = torch.Generator().manual_seed(2)
    w = q8_0_weight(21, 64, g)
    qs, d = blockquant.quantize_q8_0(w)
    assert qs.dtype == torch.int8 and qs.shape == (3, 2, 256) and d.shape == (3, 2, 8)
    torch.testing.assert_close(blockquant.dequantize_q8_0(qs, d, 21), w, rtol=0, atol=1e-6)
    # byte 32 c + 4 i + t of a block holds position 4 c + t of column i of the group
    assert int(qs[2, 1, 32 * 7 + 4 * 4 + 3]) == round(float(w[20, 32 + 4 * 7 + 3] / (w[20, 32:64].abs().max() / 127)))
    with pytest.raises(ValueError, match="multiple of 32"):
        blockquant.quantize_q8_0(torch.ones(4, 48))


def exact_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What the kernels compute, in float64: x quantized to 8 bits per block of 32
    (d = max|x| / 127, round half to even), times the weights."""
    blocks = x.double().reshape(x.shape[0], -1, 32)
    dx = blocks.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(blocks / torch.where(dx > 0, dx, torch.ones_like(dx))) * dx
    return xq.reshape(x.shape) @ w.double().t()


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
@pytest.mark.parametrize("rows, k, n", [(1, 576, 960), (3, 64, 37), (9, 1536, 70), (32, 576, 64)])
def test_block_matmul_equals_the_quantized_arithmetic(fmt, rows, k, n):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    w = q4_1_weight(n, k, g) if fmt == "q4_1" else q8_0_weight(n, k, g)
    x = torch.randn(rows, k, generator=g)
    x[0, :32] = 0  # an all-zero block (scale 0)
    if fmt == "q4_1":
        y = blockquant.q4_1_matmul(x, *blockquant.quantize_q4_1(w), n)
    else:
        y = blockquant.q8_0_matmul(x, *blockquant.quantize_q8_0(w), n)
    assert y.dtype == torch.float32 and y.shape == (rows, n)
    # float32 accumulation of exact integer block sums: within a few float32 ulps of the magnitudes
    ref = exact_product(x, w)
    scale = (x.double().abs() @ w.double().abs().t()).max()
    assert float((y.double() - ref).abs().max() / scale) < 1e-6
    # and the quantized activations stay within a percent of the float32 product
    assert float((y.double() - x.double() @ w.double().t()).abs().max() / scale) < 0.01


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
def test_a_row_gets_the_same_bits_alone_or_in_any_batch(fmt):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(100, 192, generator=g) * 0.05
    packed = blockquant.quantize_q4_1(w) if fmt == "q4_1" else blockquant.quantize_q8_0(w)
    matmul = blockquant.q4_1_matmul if fmt == "q4_1" else blockquant.q8_0_matmul
    x = torch.randn(11, 192, generator=g)
    whole = matmul(x, *packed, 100)
    for start, end in [(0, 1), (3, 5), (2, 9), (4, 11)]:  # every row-group variant, rows at other offsets
        assert torch.equal(matmul(x[start:end], *packed, 100), whole[start:end])


def test_block_matmul_rejects_a_wrong_input_shape():
    packed = blockquant.quantize_q4_1(torch.randn(8, 64))
    with pytest.raises(ValueError, match=r"shape \[M, 64\]"):
        blockquant.q4_1_matmul(torch.randn(2, 32), *packed, 8)
    with pytest.raises(ValueError, match="groups of eight"):
        blockquant.q4_1_matmul(torch.randn(2, 64), *packed, 9)  # one group holds 8 columns
