"""The playground offers exactly each dialect's parameters: every field of the wire schema is in
its panel (with the schema's own bounds and defaults) or named as deliberately left out, and no
field is offered that the schema does not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from chatforge.api.egp import translate as egp_translate
from chatforge.api.egp.schemas import EgpChatRequest
from chatforge.api.infomaniak.schemas import LegacyRequest
from chatforge.api.openai import router as openai_router
from chatforge.api.openai.schemas import ChatCompletionRequest, ProductChatCompletionRequest

SPEC = json.loads((Path(__file__).parents[2] / "src/chatforge/api/playground/static/dialects.json").read_text())
SCHEMAS: dict[str, type[BaseModel]] = {"openai": ChatCompletionRequest, "successor": ProductChatCompletionRequest,
                                       "legacy": LegacyRequest, "egp": EgpChatRequest}
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def wire(name: str) -> dict:
    """A dialect's spec with `extends` resolved, as playground.js resolves it."""
    spec = SPEC["wire"][name]
    if "extends" not in spec:
        return spec
    base = wire(spec["extends"])
    fields = [{**f, **spec.get("overrides", {}).get(f["name"], {})} for f in base["fields"]]
    return {**base, "fields": fields, "not_offered": {**base["not_offered"], **spec.get("not_offered", {})},
            "values_not_offered": spec.get("values_not_offered", {})}


def leaves(model: type[BaseModel], prefix: str = "") -> dict[str, dict]:
    """Every wire field by its dotted path, with the JSON schema of its non-null form; nested
    objects (stream_options, model_request_parameters.bindings) are walked into."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})

    def resolve(node: dict) -> dict:
        if "$ref" in node:
            return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
        options = [resolve(o) for o in node.get("anyOf", []) if o.get("type") != "null"]
        return {**node, **options[0]} if len(options) == 1 else node

    def walk(node: dict, path: str) -> dict[str, dict]:
        found = {}
        for name, prop in node.get("properties", {}).items():
            full, target = path + name, resolve(prop)
            if target.get("type") == "object" and "properties" in target:
                found |= walk(target, full + ".")
            else:
                found[full] = {**target, "default": prop.get("default")}
        return found

    return walk(schema, prefix)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_wire_field_is_offered_or_named(name):
    spec, fields = wire(name), leaves(SCHEMAS[name])
    offered = {f["name"] for f in spec["fields"]}
    accounted = offered | set(spec["structural"]) | set(spec["not_offered"])
    assert sorted(set(fields) - accounted) == [], "wire fields the playground neither offers nor names"
    assert sorted(accounted - set(fields)) == [], "playground fields the wire schema does not know"
    assert offered.isdisjoint(spec["not_offered"]) and offered.isdisjoint(spec["structural"])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_bounds_and_defaults_are_the_schemas(name):
    fields = leaves(SCHEMAS[name])
    for f in wire(name)["fields"]:
        schema = fields[f["name"]]
        if f["kind"] == "integers":  # a list: the bounds are its items'
            schema = {**schema, **schema["items"], "type": "array"}
        for bound in BOUNDS:
            want = schema.get(bound)
            got = f.get(bound)
            if name == "successor" and f["name"] == "max_tokens" and bound == "maximum":
                want = openai_router.PRODUCT_MAX_TOKENS  # the product route's own cap
            assert (None if got is None else float(int(got) if isinstance(got, str) else got)) == (
                None if want is None else float(want)), (name, f["name"], bound)
        if schema["default"] is not None:
            assert f.get("default") == schema["default"], (name, f["name"])
        kinds = {"number": {"number"}, "integer": {"integer", "number"}, "boolean": {"boolean"}, "enum": {"string"},
                 "string": {"string"}, "text": {"string"}, "json": {"object"}, "strings": {"array", None},
                 "integers": {"array"}, "tools": {"array"},
                 "tool_choice": {None}, "response_format": {None}}  # unions: no single type
        assert schema.get("type") in kinds[f["kind"]], (name, f["name"], schema.get("type"))


def test_documented_defaults_the_schemas_leave_open():
    egp = {f["name"]: f for f in wire("egp")["fields"]}
    assert egp["temperature"]["default"] == egp_translate.DEFAULT_TEMPERATURE
    legacy = {f["name"]: f for f in wire("legacy")["fields"]}
    assert legacy["profile_type"]["default"] == "standard"
    assert {n for n, f in legacy.items() if f.get("preset")} == {"temperature", "top_p", "top_k", "repetition_penalty"}


@pytest.mark.parametrize("name", ["openai", "successor"])
def test_tool_choice_and_response_format_offer_the_schemas_options(name):
    """The choices the panel lists are the schema's: tool_choice's words (a named function is the
    other form), response_format's types, but for those named as left out (TGI's on the successor)."""
    schema = SCHEMAS[name].model_json_schema()
    offered = {f["name"]: f for f in wire(name)["fields"]}
    (words,) = [o["enum"] for o in schema["properties"]["tool_choice"]["anyOf"] if "enum" in o]
    assert offered["tool_choice"]["options"] == words
    (union,) = [o for o in schema["properties"]["response_format"]["anyOf"] if "discriminator" in o]
    left_out = wire(name).get("values_not_offered", {}).get("response_format", {})
    assert sorted([*offered["response_format"]["options"], *left_out]) == sorted(union["discriminator"]["mapping"])
