"""Re-vendor the few OpenAI response schemas chatforge's tests validate against.

    python tests/api/openai_spec/vendor.py /path/to/openai-openapi/openapi.json COMMIT

Takes the roots below and every schema they reach through `$ref` from the published OpenAPI
document (github.com/openai/openai-openapi), and writes them to schemas.json beside this file
with their source. One normalization, so a plain JSON Schema validator reads them as OpenAPI
means them: OpenAPI 3.0's `nullable: true` (still used in places of the 3.1 document) becomes
`null` added to the schema's `type` (and to its `enum`, if it has one: the openai SDK's types
read such a field as Optional, e.g. a chunk's `finish_reason`). Nothing else is changed but
the long `x-oaiMeta` examples, dropped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOTS = [
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
    "ListModelsResponse", "ErrorResponse",
]


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


def normalize(node):
    if isinstance(node, dict):
        node = {k: normalize(v) for k, v in node.items() if k not in ("x-oaiMeta",)}
        if node.pop("nullable", False):
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]  # as the openai SDK types them: Optional[Literal[...]]
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            elif "type" not in node:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [normalize(v) for v in node]
    return node


def main(spec_path: str, commit: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    schemas = spec["components"]["schemas"]
    wanted, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        found: set[str] = set()
        refs(schemas[name], found)
        todo.extend(found - wanted)
    out = {
        "source": "https://github.com/openai/openai-openapi/blob/%s/openapi.json" % commit,
        "openapi_info_version": spec["info"]["version"],
        "commit": commit,
        "normalized": "OpenAPI 3.0 `nullable: true` -> null added to `type` (and `enum`); x-oaiMeta dropped",
        "roots": ROOTS,
        "schemas": {name: normalize(schemas[name]) for name in sorted(wanted)},
    }
    Path(__file__).with_name("schemas.json").write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
