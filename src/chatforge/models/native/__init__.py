"""chatforge's own CPU kernels in C (this folder's *.c and *.h files), built with the system's C
compiler on first use into one shared library and loaded with ctypes.

- model.h, plan.c / plan.h, forward.c: the model plan (life cycle, then its one call per engine
  step; models/native_model.py); moe.c: Mixtral's mixture of experts within that step;
- pool.c: the thread pool that runs a step's work (a task counter, waits that yield);
- formats.h, formats.c, fmt_*.c: the weight formats and their matmul kernels;
- attention.c, layer_ops.c: paged attention over the float16 KV cache, the per-row operations;
- memory.c: the weights' and the KV cache's memory, in huge pages where the kernel gives them.

Why not a torch C++ extension: compiling against torch's headers takes about a minute and needs
ninja; these files include no torch header and compile in a few seconds. They use their own
pthreads, not OpenMP: an OpenMP team spins at its barriers, which collapses when another process
takes a CPU (benchmarks/RESULTS.md). x86 with AVX2, FMA and F16C only.

The library is cached in a folder (`cache_dir`, the `kernel_cache_dir` setting; default
`~/.cache/chatforge`, a per-user temporary folder where that cannot be written), named by a hash
of the sources, flags and compiler, and written atomically: processes can share it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCES = sorted(Path(__file__).parent.glob("*.c"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
# -ffp-contract=off: the compiler may not fuse a scalar expression into an FMA in one variant of
# a kernel and not in another (results must not depend on the batch: model.h).
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-pthread", "-shared", "-fPIC"]
LIBS = ["-lm"]


class NativeKernelsUnavailable(RuntimeError):
    """The kernels cannot run here: no AVX2, no C compiler, or the build failed."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None

_p, _i64, _int, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# name -> (argument types, result type)
_SIGNATURES = {
    "cf_model_new": ([_p, _int, _p, _p, _i64], _int),
    "cf_model_free": ([_p], None),
    "cf_model_step": ([_p, _p], _int),
    "cf_model_logits": ([_p, _p, _i64, _p], _int),
    "cf_model_error": ([_p], ctypes.c_char_p),
    "cf_model_threads": ([_p], _i64),
    "cf_model_pool_stats": ([_p, _p], None),
    "cf_sizeof": ([_i64], _i64),
    "cf_model_profile": ([_p, _int, _p], None),
    # single operations, for the kernel tests (tests/models/test_native_kernels.py)
    "cf_quantize_q8": ([_p, _i64, _i64, _p, _p, _p], None),
    "cf_rms_norm": ([_p, _p, _i64, _f32, _p], None),
    "cf_swiglu": ([_p, _i64, _p], None),
    "cf_geglu": ([_p, _i64, _p], None),
    "cf_apply_token_bitmask": ([_p, _i64, _p, _i64, _p, _i64, _i64], None),
    "cf_rotate_head": ([_p, _p, _p, _i64, _p], None),
    "cf_attend_scratch_floats": ([_i64, _i64, _i64], _i64),
    "cf_attend": ([_p, _i64, _i64, _i64, _i64, _p], None),
    "cf_test_matmul": ([_p, _p, _i64, _i64, _i64, _i64, _i64, _p, _p, _int, _int], None),
    "cf_select_kernels": ([], ctypes.c_char_p),
    "cf_alloc_pages": ([_i64], _p),
    "cf_free_pages": ([_p, _i64], None),
    "cf_test_pool": ([_int, _i64, _i64, _p], _int),
    "cf_test_row": ([_p, _i64, _p], None),
}


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "chatforge"


def _build(compiler: str, cache_dir: Path) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(" ".join(CFLAGS).encode() + version.encode())
    for source in SOURCES + HEADERS:
        digest.update(source.name.encode() + source.read_bytes())
    name = f"chatforge-kernels-{digest.hexdigest()[:16]}.so"
    target = cache_dir / name
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):
            raise PermissionError(target.parent)
    except OSError:  # a read-only home (some CI runners, containers): a per-user temporary folder
        target = Path(tempfile.gettempdir()) / f"chatforge-{os.getuid()}" / name
        if target.exists():
            return target
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, *map(str, SOURCES), "-o", tmp, *LIBS], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise NativeKernelsUnavailable(f"{compiler} could not build the CPU kernels: {done.stderr.strip()[-800:]}")
        os.replace(tmp, target)  # atomic: another process sees the whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library(cache_dir: str | Path | None = None, compiler: str = "cc") -> ctypes.CDLL:
    """The loaded kernels, built on the first call (with `compiler`, cached in `cache_dir`, default
    default_cache_dir()); later calls return that library. NativeKernelsUnavailable says why not."""
    global _library, _error
    if _library is not None:  # once loaded, no lock
        return _library
    with _lock:
        if _library is not None:
            return _library
        if _error is not None:
            raise NativeKernelsUnavailable(_error)
        try:
            capability = torch.backends.cpu.get_cpu_capability()
            if capability not in ("AVX2", "AVX512"):
                raise NativeKernelsUnavailable(f"chatforge's CPU kernels need AVX2, FMA and F16C; this CPU offers {capability}")
            if shutil.which(compiler) is None:
                raise NativeKernelsUnavailable(f"no C compiler ({compiler!r} not found) to build chatforge's CPU kernels")
            lib = ctypes.CDLL(str(_build(compiler, Path(cache_dir) if cache_dir else default_cache_dir())))
        except NativeKernelsUnavailable as exc:
            _error = str(exc)
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            _error = f"chatforge's CPU kernels could not be built or loaded: {exc}"
            raise NativeKernelsUnavailable(_error) from exc
        for name, (argtypes, restype) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, restype
        _library = lib
        return lib


def loaded() -> ctypes.CDLL | None:
    """The kernels if something has loaded them already (the native backend), else None: for
    helpers that use them when present and must not cause a build."""
    return _library


def available() -> bool:
    if _library is not None or _error is not None:  # decided: asked once per layer and step
        return _library is not None
    try:
        library()
    except NativeKernelsUnavailable:
        return False
    return True
