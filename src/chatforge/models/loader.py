"""The one model loader: a `ModelSource` (HF folder or GGUF file) -> a ready model and its config.

The model is first built on the meta device (no memory, no random init, which for a large
vocabulary costs seconds) and the checkpoint tensors are then assigned in place, converted
to the requested dtype and device. Names must match exactly: a missing, unexpected or
wrongly shaped tensor is a `WeightsMismatchError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from chatforge.models.config import ModelConfig
from chatforge.models.errors import ModelError, WeightsMismatchError
from chatforge.models.gguf_file import GGUFFile
from chatforge.models.gguf_weights import read_gguf
from chatforge.models.mixtral import stack_expert_weights
from chatforge.models.registry import model_class
from chatforge.models.source import ModelNotFoundError, ModelSource

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
# Checkpoint entries that are derived, not learned: old Llama files carry RoPE's inv_freq.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_model(
    source: ModelSource, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """(model in eval mode without grads, its config)."""
    if source.kind == "gguf":
        if not Path(source.path).is_file():
            raise ModelNotFoundError(f"no GGUF file at {source.path}")
        config, state = read_gguf(source.path)
    elif source.kind == "hf":
        config, state = read_hf_folder(source.path)
    else:
        raise ModelError(f"unknown model source kind {source.kind!r} (expected 'gguf' or 'hf')")
    return build_model(config, state, dtype, device), config


def read_config(source: ModelSource) -> ModelConfig:
    """The model's config alone (no weights read): to size its KV pool and check memory first."""
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
    return ModelConfig.from_hf_dict(_read_json(config_path), _read_json(generation_path) if generation_path.is_file() else None)


def read_hf_folder(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict) from config.json, generation_config.json and the safetensors file(s)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"no config.json in {folder.resolve()}")
    generation_path = folder / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else None
    config = ModelConfig.from_hf_dict(_read_json(config_path), generation)
    state: dict[str, torch.Tensor] = {}
    for shard in _safetensors_files(folder):
        state.update(load_file(shard))
    return config, state


def _safetensors_files(folder: Path) -> list[Path]:
    if (folder / _INDEX_FILE).is_file():
        weight_map = _read_json(folder / _INDEX_FILE).get("weight_map", {})
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise ModelNotFoundError(f"{_INDEX_FILE} lists shards that do not exist: {', '.join(missing)}")
        return shards
    if (folder / _SINGLE_FILE).is_file():
        return [folder / _SINGLE_FILE]
    raise ModelNotFoundError(f"no {_SINGLE_FILE} or {_INDEX_FILE} in {folder.resolve()}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


def build_model(
    config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device | str
) -> nn.Module:
    """Instantiate the config's architecture and move `state` into it (strict names and shapes)."""
    cls = model_class(config.architecture)
    with torch.device("meta"):
        model = cls(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(_DERIVED_SUFFIXES)}
    if config.num_experts:
        state = stack_expert_weights(state, config.num_experts)  # Mixtral files' expert layouts
    if config.tie_word_embeddings:
        # Some tied checkpoints still store the (identical) lm_head; the embedding is the one used.
        state.pop("lm_head.weight", None)
    _check_names(expected, state)
    converted = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    model.to(device)  # the non-persistent RoPE buffer was made on the CPU
    model.requires_grad_(False)
    return model.eval()


def _check_names(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    wrong = [
        f"{name} {tuple(state[name].shape)} (expected {shape})"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    if wrong:
        problems.append(f"wrong shapes: {_names(wrong)}")
    if problems:
        raise WeightsMismatchError("; ".join(problems))


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
