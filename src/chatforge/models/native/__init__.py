"""chatforge's own CPU kernels in C (this folder's *.c files, simd.h shared), built with the system's C compiler
on first use into one shared library and loaded with ctypes.

- blockquant.c: matmuls with weights and activations quantized in blocks of 32 (models/blockquant.py);
- decode_attention.c: attention of one new token per sequence read straight from the paged KV cache
  (models/attention.py);
- layer_ops.c: a decoder layer's small operations fused (residual add + RMSNorm, RoPE + KV cache
  write, SwiGLU; models/fused_ops.py).

Why not a torch C++ extension: compiling against torch's headers takes about a minute and needs
ninja; these files include no torch header and compile in about a second. They use OpenMP; in a
process that has loaded torch, the library binds to torch's own libgomp (same soname), so the
kernels share torch's thread pool and its torch.set_num_threads setting (a second OpenMP runtime
would spin its own threads against torch's). x86 with AVX2 and FMA only.

The library is cached under `$CHATFORGE_CACHE_DIR` (default `~/.cache/chatforge`; a per-user
temporary folder where that cannot be written), named by a hash of the sources, flags and
compiler, and written atomically: processes can share it.
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
# a kernel and not in another (blockquant.c's results must not depend on the batch).
CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


class NativeKernelsUnavailable(RuntimeError):
    """The kernels cannot run here: no AVX2, no C compiler, or the build failed."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None

_p, _i64, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "q4_1_matmul": [_p, _i64, _i64, _p, _p, _p, _i64, _p],
    "q8_0_matmul": [_p, _i64, _i64, _p, _p, _i64, _p],
    "decode_attention": [_p, _p, _p, _p, _p, _i64, _i64, _i64, _i64, _i64, _f32, _i64, _p],
    "add_rms_norm": [_p, _p, _p, _i64, _i64, _f32, _p],
    "swiglu": [_p, _i64, _i64, _p],
    "rotary_cache_write": [_p, _i64, _i64, _i64, _i64, _p, _p, _p, _p, _p, _p],
}
_VOID = ("add_rms_norm", "swiglu", "rotary_cache_write")


def cache_dir() -> Path:
    configured = os.environ.get("CHATFORGE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "chatforge"


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(" ".join(CFLAGS).encode() + version.encode())
    for source in SOURCES + HEADERS:
        digest.update(source.name.encode() + source.read_bytes())
    name = f"chatforge-kernels-{digest.hexdigest()[:16]}.so"
    target = cache_dir() / name
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
            [compiler, *CFLAGS, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise NativeKernelsUnavailable(f"{compiler} could not build the CPU kernels: {done.stderr.strip()[-800:]}")
        os.replace(tmp, target)  # atomic: another process sees the whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL:
    """The loaded kernels (built on the first call); NativeKernelsUnavailable says why not."""
    global _library, _error
    if _library is not None:  # the hot path (every matmul and attention call): no lock once loaded
        return _library
    with _lock:
        if _library is not None:
            return _library
        if _error is not None:
            raise NativeKernelsUnavailable(_error)
        try:
            capability = torch.backends.cpu.get_cpu_capability()
            if capability not in ("AVX2", "AVX512"):
                raise NativeKernelsUnavailable(f"chatforge's CPU kernels need AVX2 and FMA; this CPU offers {capability}")
            compiler = os.environ.get("CC", "cc")
            if shutil.which(compiler) is None:
                raise NativeKernelsUnavailable(f"no C compiler ({compiler!r} not found) to build chatforge's CPU kernels")
            lib = ctypes.CDLL(str(_build(compiler)))
        except NativeKernelsUnavailable as exc:
            _error = str(exc)
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            _error = f"chatforge's CPU kernels could not be built or loaded: {exc}"
            raise NativeKernelsUnavailable(_error) from exc
        for name, argtypes in _SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, None if name in _VOID else ctypes.c_int
        _library = lib
        return lib


def available() -> bool:
    if _library is not None or _error is not None:  # decided: asked once per layer and step
        return _library is not None
    try:
        library()
    except NativeKernelsUnavailable:
        return False
    return True
