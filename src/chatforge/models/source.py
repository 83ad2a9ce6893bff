"""Where a model's files are: a packaged model (the bundled default among them), a GGUF file, or
a Hugging Face folder.

Nothing is ever fetched from a hub. A model that cannot be found is a `ModelNotFoundError`
naming the path that was tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chatforge.models.packaged import SMOLLM2, ModelNotFoundError, find_packaged, packaged_gguf_path

__all__ = ["BUNDLED_ALIASES", "BUNDLED_MODEL_ID", "ModelNotFoundError", "ModelSource", "bundled_gguf_path", "resolve_model"]

BUNDLED_MODEL_ID = SMOLLM2.model_id
BUNDLED_ALIASES = SMOLLM2.aliases


@dataclass(frozen=True)
class ModelSource:
    model_id: str  # the id the server answers to
    path: Path  # a .gguf file or a folder with config.json
    kind: str  # "gguf" | "hf"
    aliases: tuple[str, ...] = ()  # other names it answers to (a packaged model's)


def bundled_gguf_path() -> Path:
    return packaged_gguf_path(SMOLLM2)


def resolve_model(path_or_id: str | None = None) -> ModelSource:
    """The bundled model for None; a packaged model by id or alias; otherwise a local .gguf file
    or HF folder."""
    packaged = SMOLLM2 if path_or_id is None else find_packaged(path_or_id)
    if packaged is not None:
        return ModelSource(packaged.model_id, packaged_gguf_path(packaged), "gguf", packaged.aliases)
    path = Path(path_or_id).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.stem, path.resolve(), "gguf")
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path.name, path.resolve(), "hf")
    if path.is_dir():
        raise ModelNotFoundError(f"no config.json in {path.resolve()}")
    raise ModelNotFoundError(f"no model at {path.resolve()} (a .gguf file or a folder with config.json)")
