"""What the dialects' wire formats share: the strict base model, whole numbers as JSON Schema
counts them, the seed bound, text parts joined, OpenAI-style logprobs objects. Each dialect
imports this and the service's protocol, never another dialect nor the engine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from chatforge.service.protocol import TokenInfo, TokenLogprobs

# A signed 64-bit bound: schema validators compare larger integers as floats, which blurs the edge.
SEED_MAX = 2**63 - 1


class WireModel(BaseModel):
    """Strict types (`"stream": 0` is an error, not False) and no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = super().__get_pydantic_json_schema__(core_schema, handler)
        _standard_bounds(handler.resolve_ref_schema(json_schema))
        return json_schema


def _whole(value):
    # JSON Schema's "integer" includes 5.0; strict ints would refuse it, lax ones would take "5".
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole)]

# Bounds on an optional WholeNumber (`WholeNumber | None = Field(ge=1)`) cannot reach the int
# inside the validator: pydantic checks them after it and publishes them under its own names
# (`ge`, `le`), which schema-driven clients do not read. Each wire model renames them.
_BOUND_NAMES = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node: Any) -> None:
    """Rename pydantic's bound keywords to JSON Schema's in every numeric schema under `node`."""
    if isinstance(node, list):
        for item in node:
            _standard_bounds(item)
    elif isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            for short, name in _BOUND_NAMES.items():
                if short in node:
                    node[name] = node.pop(short)
        for value in node.values():
            _standard_bounds(value)


def join_text_parts(texts: Iterable[str]) -> str:
    """A message's text parts as one string, joined as vLLM does for templates that expect strings."""
    return "\n".join(texts)


def _token(t: TokenInfo) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob, "bytes": t.bytes}


def logprobs_dict(lps: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    """OpenAI's chat `logprobs` object (`content` only; see each dialect for more fields)."""
    if lps is None:
        return None
    return {"content": [{**_token(lp.sampled), "top_logprobs": [_token(t) for t in lp.top]} for lp in lps]}
