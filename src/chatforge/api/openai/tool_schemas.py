"""OpenAI wire schemas for tools, tool calls and output formats, as OpenAI documents them, plus
the two spellings other servers' clients send: vLLM's `structured_outputs` extension and, on
Infomaniak's successor route (a TGI Messages API), TGI's `response_format` values and
`tool_prompt`. Strict and closed like every wire model (wire.py): a field this server does not
know is a 400 naming it, never silently ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from chatforge.api.wire import WireModel


# -- tools and tool choice -------------------------------------------------------------------
class FunctionDefinition(WireModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments (an object)")
    strict: bool | None = Field(default=None, description="true: a schema keyword that cannot be enforced is a 400")


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoiceWire = Literal["none", "auto", "required"] | NamedToolChoice


# -- tool calls in the history ---------------------------------------------------------------
class FunctionCall(WireModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class MessageToolCall(WireModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


# -- output formats ------------------------------------------------------------------------------
class JsonSchemaFormat(WireModel):
    name: str
    description: str | None = None
    # required, as OpenAI's API requires it (its published schema leaves it optional); `true`: any JSON
    schema_: dict[str, Any] | bool = Field(alias="schema", description="a JSON Schema; true: any JSON")
    strict: bool | None = Field(default=None, description="accepted; the output follows the schema either way")


class TextFormat(WireModel):
    type: Literal["text"]


class JsonSchemaResponseFormat(WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class JsonObjectResponseFormat(WireModel):
    type: Literal["json_object"]


ResponseFormat = Annotated[TextFormat | JsonSchemaResponseFormat | JsonObjectResponseFormat, Field(discriminator="type")]


class StructuredOutputs(WireModel):
    """vLLM's extension: exactly one of the four."""

    json_: dict[str, Any] | bool | str | None = Field(default=None, alias="json", description="a JSON Schema (or its text)")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = Field(default=None, description="a Lark grammar (llguidance's dialect)")


# -- TGI's spellings (the Infomaniak successor route) ----------------------------------------
class TgiJsonFormat(WireModel):
    type: Literal["json"]
    value: dict[str, Any] = Field(description="a JSON Schema")


class TgiJsonObjectFormat(WireModel):
    """OpenAI's `json_object`, or TGI's alias of `json` when it carries a schema."""

    type: Literal["json_object"]
    value: dict[str, Any] | None = None


class TgiRegexFormat(WireModel):
    type: Literal["regex"]
    value: str


ProductResponseFormat = Annotated[
    TextFormat | JsonSchemaResponseFormat | TgiJsonObjectFormat | TgiJsonFormat | TgiRegexFormat,
    Field(discriminator="type"),
]
