"""DESIGN §1's rules for the API floor, read from the source: `api` reaches the engine, the text
layer and the models only through the service; no dialect imports another; and neither `api`,
`service` nor `platform` reads the environment (settings.py does, once)."""

from __future__ import annotations

import ast
from pathlib import Path

import chatforge

PACKAGE = Path(chatforge.__file__).parent
DIALECTS = ("openai", "infomaniak", "egp")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_api_imports_no_engine_text_or_model_module():
    for path in modules("api"):
        below = {m for m in imports(path) if m.split(".")[1:2] in (["engine"], ["text"], ["models"])}
        assert not below, f"{path.relative_to(PACKAGE)} imports {sorted(below)}"


def test_no_dialect_imports_another():
    for dialect in DIALECTS:
        others = {f"chatforge.api.{d}" for d in DIALECTS if d != dialect}
        for path in modules(f"api/{dialect}"):
            crossing = {m for m in imports(path) if any(m == o or m.startswith(o + ".") for o in others)}
            assert not crossing, f"{path.relative_to(PACKAGE)} imports {sorted(crossing)}"


def test_only_settings_reads_the_environment():
    for folder in ("api", "service", "platform"):
        for path in modules(folder):
            text = path.read_text()
            assert "os.environ" not in text and "getenv" not in text, path.relative_to(PACKAGE)
