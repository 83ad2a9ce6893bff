"""Read a Hugging Face tokenizer folder: tokenizer.json (the Rust tokenizer itself), and around it
the files that name its special tokens, its chat templates and its extra stop ids.

Where each piece comes from, first found wins:
- special tokens: tokenizer_config.json, then special_tokens_map.json for names it lacks;
- chat templates: chat_template.jinja, chat_template.json, tokenizer_config.json's
  `chat_template` (a string, or a list of `{name, template}`), plus
  additional_chat_templates/<name>.jinja for named alternatives;
- end-of-turn ids: generation_config.json's `eos_token_id` (an int or a list, e.g. Llama 3's
  three ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Backend

from chatforge.text.errors import TokenizerError

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass
class HFTokenizerFolder:
    backend: _Backend
    special_tokens: dict[str, str]  # template variable name -> token text
    chat_templates: dict[str, str]  # "default" and named alternatives
    end_of_turn_ids: list[int] = field(default_factory=list)  # from generation_config.json


def read_hf_tokenizer_folder(path: Path) -> HFTokenizerFolder:
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerError(f"no tokenizer.json in {path.resolve()}")
    try:
        backend = _Backend.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust side raises a bare Exception for malformed files
        raise TokenizerError(f"cannot read {tokenizer_file}: {exc}") from exc
    config = _read_json(path / "tokenizer_config.json")
    special_map = _read_json(path / "special_tokens_map.json")
    special = {}
    for name in _SPECIAL_NAMES:
        value = _token_text(config.get(name))
        special[name] = value if value is not None else _token_text(special_map.get(name))
    generation = _read_json(path / "generation_config.json")
    eos = generation.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else [i for i in eos or () if isinstance(i, int)]
    return HFTokenizerFolder(backend, special, _chat_templates(path, config), eos_ids)


def _chat_templates(path: Path, config: dict[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    in_config = config.get("chat_template")
    if isinstance(in_config, str):
        templates["default"] = in_config
    elif isinstance(in_config, list):
        for entry in in_config:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str):
                templates[entry["name"]] = entry["template"]
    json_file = _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(json_file, str):
        templates["default"] = json_file
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_dir = path / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    return templates


def _token_text(value: Any) -> str | None:
    """A special token as configs write it: a plain string or an AddedToken dict with `content`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{file} should hold a JSON object")
    return data
