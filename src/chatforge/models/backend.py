"""Which backend computes a model: chosen once, before it is loaded (models/step.py).

- weights "native" (the default) on a CPU: models/native_model.py, each weight in its own format
  (a GGUF's Q4_0 / Q4_1 / Q5_0 / Q8_0 / Q4_K / Q6_K blocks without a float copy: native_formats.py;
  float weights in float32), batch-invariant;
- weights "exact", or a CUDA device: models/torch_backend.py, transformers' arithmetic in float32
  (bfloat16 by default on CUDA).
Where the native backend cannot compute the model (no AVX2 or no C compiler; an architecture
feature its plan does not have yet: native_model.native_support), "native" falls back to the
torch backend in float32 and says why in the log.

`choose_backend` decides from the config alone, so the memory check (service/loading.py) can
size a model as it will be held before any weight is read.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from chatforge.models import native
from chatforge.models.config import ModelConfig
from chatforge.models.errors import ModelError
from chatforge.models.gguf_weights import read_gguf
from chatforge.models.loader import load_model, read_config, read_hf_folder
from chatforge.models.memory import weights_bytes
from chatforge.models.registry import model_class
from chatforge.models.source import ModelNotFoundError, ModelSource
from chatforge.models.step import ModelBackend

log = logging.getLogger("chatforge.models")

WEIGHT_MODES = ("native", "exact")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Checkpoint entries that are derived, not learned: old Llama files carry RoPE's inv_freq.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


def pick_device(name: str | None) -> torch.device:
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is not None:
        return _DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class BackendChoice:
    native: bool
    device: torch.device
    dtype: torch.dtype  # the torch backend's weights and KV cache (the native KV cache is float16)

    def kv_bytes_per_token(self, config: ModelConfig) -> int:
        """K and V of one token over all layers, as this backend's cache holds them."""
        itemsize = 2 if self.native else self.dtype.itemsize
        return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * itemsize

    def weights_bytes(self, source: ModelSource) -> int:
        """The bytes the model's weights will take once loaded on this backend."""
        if self.native:
            from chatforge.models.native_model import native_weights_bytes

            return native_weights_bytes(source)
        return weights_bytes(source.kind, Path(source.path), self.dtype)


def choose_backend(
    config: ModelConfig,
    weights: str = "native",
    device: str | None = None,
    dtype: str | None = None,
    kernel_cache_dir: str | Path | None = None,
    compiler: str = "cc",
) -> BackendChoice:
    """The backend a model of `config` runs on with these settings (module docstring)."""
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    dev = pick_device(device)
    if weights == "native" and dev.type == "cpu":
        from chatforge.models.native_model import native_support

        try:
            native.library(kernel_cache_dir, compiler)
            why_not = native_support(config)
        except native.NativeKernelsUnavailable as e:
            why_not = f"native kernels unavailable ({e})"
        if why_not is None:
            return BackendChoice(True, dev, torch.float32)
        log.warning("%s: computing in float32 with torch instead", why_not)
        return BackendChoice(False, dev, torch.float32)
    return BackendChoice(False, dev, pick_dtype(dtype, dev))


def load_backend(
    source: ModelSource,
    weights: str = "native",
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    kernel_cache_dir: str | Path | None = None,
    compiler: str = "cc",
) -> ModelBackend:
    """The model of `source` on the backend its settings choose."""
    choice = choose_backend(read_config(source), weights, device, dtype, kernel_cache_dir, compiler)
    if choice.native:
        return load_native(source, threads)
    from chatforge.models.torch_backend import TorchBackend

    model, _ = load_model(source, choice.dtype, choice.device)
    return TorchBackend(model)


def load_native(source: ModelSource, threads: int | None = None):
    """A NativeModel of `source` (the kernels must be loadable, the architecture supported)."""
    from chatforge.models.native_model import NativeModel

    if source.kind == "gguf":
        if not Path(source.path).is_file():
            raise ModelNotFoundError(f"no GGUF file at {source.path}")
        config, state = read_gguf(source.path, keep_quantized=True)
    elif source.kind == "hf":
        config, state = read_hf_folder(source.path)
    else:
        raise ModelError(f"unknown model source kind {source.kind!r} (expected 'gguf' or 'hf')")
    model_class(config.architecture)  # an unsupported architecture is refused by name
    for name in [k for k in state if k.endswith(_DERIVED_SUFFIXES)]:
        del state[name]
    model = NativeModel(config, state, threads)  # empties `state` as it packs
    _return_freed_memory()
    return model


def _return_freed_memory() -> None:
    """Hands the heap the checkpoint's tensors were read into back to the system (glibc keeps
    freed memory otherwise: ~150 MB of resident memory for nothing after loading the bundled model)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
