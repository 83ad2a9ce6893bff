"""A lean reader for GGUF files: header, metadata and tensor directory, tensors on demand.

`gguf.GGUFReader` builds a numpy view for every element of the vocabulary arrays and needs
~5 s on a 49k-token vocabulary; this reader parses the same header in ~0.15 s. Tensor data is
read through a memory map and dequantized with the `gguf` package's own kernels.

Layout (little endian): magic "GGUF", version u32, tensor count u64, kv count u64, then the
key/value pairs, then one info per tensor (name, n_dims, dims[n_dims] as u64 with the fastest
dimension first, ggml type u32, offset u64 into the aligned data section).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# GGUF metadata value types.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}
_NUMPY = {
    _UINT8: np.uint8, _INT8: np.int8, _UINT16: np.uint16, _INT16: np.int16, _UINT32: np.uint32,
    _INT32: np.int32, _FLOAT32: np.float32, _BOOL: np.bool_, _UINT64: np.uint64, _INT64: np.int64,
    _FLOAT64: np.float64,
}


_CHUNK_VALUES = 1 << 22  # values dequantized per kernel call (16 MiB of float32)


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (slowest dimension first), unlike the file's order
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """Metadata (`.metadata`, a dict) and tensors (`.tensors`, name -> TensorInfo) of a GGUF file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        if self._read(4) != b"GGUF":
            raise GGUFError(f"{self.path} is not a GGUF file (bad magic)")
        self.version = self._scalar(_UINT32)
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: unsupported GGUF version {self.version}")
        n_tensors = self._scalar(_UINT64)
        n_kv = self._scalar(_UINT64)
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar(_UINT32))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar(_UINT32)
            dims = struct.unpack_from(f"<{n_dims}Q", self._mm, self._pos)
            self._pos += 8 * n_dims
            ggml_type = self._scalar(_UINT32)
            offset = self._scalar(_UINT64)
            infos.append((name, dims, ggml_type, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = (self._pos + alignment - 1) // alignment * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, ggml_type, offset in infos:
            self.tensors[name] = TensorInfo(
                name=name,
                shape=tuple(int(d) for d in reversed(dims)),
                ggml_type=ggml_type,
                offset=data_start + offset,
                nbytes=_nbytes(dims, ggml_type),
            )

    # -- parsing helpers -------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        b = self._mm[self._pos : self._pos + n]
        self._pos += n
        return b

    def _scalar(self, vtype: int):
        fmt = _SCALAR[vtype]
        (v,) = struct.unpack_from(fmt, self._mm, self._pos)
        self._pos += struct.calcsize(fmt)
        return v

    def _string(self) -> str:
        (n,) = struct.unpack_from("<Q", self._mm, self._pos)
        self._pos += 8
        return self._read(n).decode("utf-8", errors="surrogateescape")

    def _value(self, vtype: int):
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype = self._scalar(_UINT32)
            count = self._scalar(_UINT64)
            if etype in _NUMPY:  # numeric arrays in one read
                dt = np.dtype(_NUMPY[etype]).newbyteorder("<")
                arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._pos).copy()
                self._pos += dt.itemsize * count
                return arr.tolist()
            return [self._value(etype) for _ in range(count)]
        if vtype in _SCALAR:
            return self._scalar(vtype)
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype}")

    # -- tensors ---------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 array (a view of the memory map)."""
        t = self.tensors[name]
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as a writable float32 array in torch order."""
        import gguf.quants
        from gguf import GGMLQuantizationType, GGML_QUANT_SIZES

        t = self.tensors[name]
        qtype = GGMLQuantizationType(t.ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = t.shape[-1] // block * type_size
        raw = self.raw(name).reshape(-1, row_bytes)  # [rows, bytes per row]
        kernel = getattr(gguf.quants, qtype.name, None)
        if kernel is not None and hasattr(kernel, "dequantize_rows"):
            # NOTE: the per-type kernel over many rows at once. `gguf.quants.dequantize` runs the same
            # kernel on groups of 16 rows from a Python loop, which makes loading ~2x slower. Chunks
            # of ~_CHUNK_VALUES values bound the kernel's temporaries (several float32 copies of its
            # input): a 262k-token embedding in one call peaked at 2.5x its own size.
            kernel.init_grid()
            rows = raw.shape[0]
            out = np.empty((rows, t.shape[-1]), dtype=np.float32)
            step = max(1, _CHUNK_VALUES // t.shape[-1])
            for start in range(0, rows, step):
                out[start : start + step] = kernel.dequantize_rows(raw[start : start + step])
        else:  # F32, F16 and other plain types: a view of the memory map
            out = gguf.quants.dequantize(raw, qtype)
        if out.dtype != np.float32 or not out.flags.writeable:
            out = np.array(out, dtype=np.float32, copy=True)
        return out.reshape(t.shape)

    def close(self) -> None:
        self._mm.close()


def _nbytes(dims: tuple[int, ...], ggml_type: int) -> int:
    from gguf import GGMLQuantizationType, GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n = 1
    for d in dims:
        n *= int(d)
    return n // block * type_size
