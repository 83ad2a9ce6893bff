"""A JSON schema given on the command line (`chatforge chat --json-schema`, `chatforge bench
--json-schema`): inline JSON, or the path of a file holding it."""

from __future__ import annotations

import json
from pathlib import Path


def load_json_schema(value: str) -> dict:
    """The schema `value` gives; ValueError with a one-line reason when it gives none."""
    text = value if value.lstrip().startswith("{") else _read(Path(value))
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the JSON schema is not JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema is an object")
    return schema


def response_format(schema: dict) -> dict:
    """OpenAI's `response_format` for `schema`."""
    return {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the JSON schema file {path}: {e.strerror}") from None
