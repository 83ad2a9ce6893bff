"""A model's config read from its files alone, without torch and without reading any weights:
what sizes KV pools and checks memory before loading, and all a gateway needs of a model it
serves on other machines."""

from __future__ import annotations

import json
from pathlib import Path

from chatforge.models.config import ModelConfig
from chatforge.models.gguf_file import GGUFFile
from chatforge.models.source import ModelNotFoundError, ModelSource


def read_config(source: ModelSource) -> ModelConfig:
    if source.kind == "gguf":
        if not Path(source.path).is_file():
            raise ModelNotFoundError(f"no GGUF file at {source.path}")
        gguf = GGUFFile(source.path)
        try:
            return ModelConfig.from_gguf_metadata(gguf.metadata, gguf.tensors.keys())
        finally:
            gguf.close()
    config_path = Path(source.path) / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"no config.json in {Path(source.path).resolve()}")
    generation_path = Path(source.path) / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else None
    return ModelConfig.from_hf_dict(json.loads(config_path.read_text()), generation)
