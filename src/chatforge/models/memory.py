"""Memory before loading: what a model will take, what the machine can give, and how several
served models split one KV budget.

A model too big for the memory available is refused before any weight is read, with the
numbers, rather than killed by the kernel halfway through. "Available" is the kernel's
MemAvailable (free memory plus what it can reclaim, /proc/meminfo), lowered to the room left
under this process's cgroup limit when there is one (v2 `memory.max` - `memory.current`, or v1's
`memory.limit_in_bytes` - `memory.usage_in_bytes`, the cgroup's reclaimable file pages added back).
The need is the weights as loaded (every tensor in the engine's dtype: phase 1 dequantizes GGUF
files) plus the model's KV pool.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from chatforge.models.errors import ModelError

_GiB = 1024**3
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class InsufficientMemoryError(ModelError):
    """The model would not fit in the memory available."""


@dataclass(frozen=True)
class Available:
    bytes: int
    how: str  # where the figure comes from, for the error message


def weights_bytes(kind: str, path: Path, dtype: torch.dtype) -> int:
    """The bytes the weights of a "gguf" file or "hf" folder take once loaded in `dtype`."""
    if kind == "gguf":
        from chatforge.models.gguf_file import GGUFFile

        gguf = GGUFFile(path)
        try:
            count = sum(_numel(t.shape) for t in gguf.tensors.values())
        finally:
            gguf.close()
    else:
        count = sum(_safetensors_numel(f) for f in sorted(Path(path).glob("*.safetensors")))
    return count * dtype.itemsize


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _safetensors_numel(file: Path) -> int:
    """Elements in a safetensors file, from its JSON header alone."""
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(_numel(t["shape"]) for name, t in header.items() if name != "__metadata__" and t.get("dtype") in _DTYPE_BYTES)


def available(proc: Path = Path("/proc"), cgroup_fs: Path = Path("/sys/fs/cgroup")) -> Available:
    """What this process may still allocate (see the module docstring)."""
    meminfo = _meminfo(proc / "meminfo")
    best = Available(meminfo.get("MemAvailable", 0), f"MemAvailable {gib(meminfo.get('MemAvailable', 0))}")
    room = _cgroup_room(proc / "self" / "cgroup", cgroup_fs)
    if room is not None and room.bytes < best.bytes:
        return room
    return best


def check_fits(model_id: str, weights: int, kv_cache: int, dtype: torch.dtype | str, room: Available | None = None) -> None:
    """InsufficientMemoryError, with the numbers, when weights + KV pool exceed what is available
    (`dtype`: what the weights are held in, for the message)."""
    room = room or available()
    needed = weights + kv_cache
    if needed > room.bytes:
        raise InsufficientMemoryError(
            f"{model_id} needs {gib(needed)} (weights {gib(weights)} in {str(dtype).removeprefix('torch.')}, "
            f"KV cache {gib(kv_cache)}) but only {gib(room.bytes)} is available ({room.how}); "
            "serve a smaller model or lower engine.kv_cache_mb"
        )


def kv_pool_shares(per_token: list[int], own: list[int | None], budget: int) -> list[int]:
    """Each served model's KV pool in bytes. A model with its own size keeps it; the others split
    `budget` so that each holds the same number of tokens (a model whose token costs twice as many
    bytes of K and V gets twice the bytes)."""
    shared = [cost for cost, mine in zip(per_token, own) if mine is None]
    tokens = budget // sum(shared) if shared else 0
    return [mine if mine is not None else tokens * cost for cost, mine in zip(per_token, own)]


def gib(n: int) -> str:
    return f"{n / _GiB:.2f} GiB"


def _meminfo(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _cgroup_room(self_cgroup: Path, root: Path) -> Available | None:
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        folder = root / rel.lstrip("/")
        if controllers == "":  # cgroup v2
            limit, usage = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            stat = _stat(folder / "memory.stat", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            folder = root / "memory" / rel.lstrip("/")
            limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
            stat = _stat(folder / "memory.stat", "total_inactive_file")
        else:
            continue
        # v1 writes "no limit" as a huge number; anything past 2^60 bytes is no limit.
        if limit is not None and usage is not None and limit < 1 << 60:
            room = max(0, limit - usage + stat)
            return Available(room, f"cgroup limit {gib(limit)}, {gib(usage - stat)} of it in use")
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0
