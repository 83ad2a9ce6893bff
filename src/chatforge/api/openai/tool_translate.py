"""OpenAI tools, tool calls and output formats <-> the internal model, both ways: what a request
asks (tools, tool_choice, response_format, structured_outputs, past calls) and how an answer's
calls are written (`message.tool_calls`, and `delta.tool_calls` as OpenAI streams them: a call's
first delta carries its index, id, type, name and `arguments: ""`, the next ones only argument
fragments, the model's exact JSON text)."""

from __future__ import annotations

import json
from typing import Any

from chatforge.api.openai.tool_schemas import (
    JsonObjectResponseFormat, JsonSchemaResponseFormat, MessageToolCall, NamedToolChoice, StructuredOutputs,
    TgiJsonFormat, TgiJsonObjectFormat, TgiRegexFormat, TextFormat, Tool, ToolChoiceWire,
)
from chatforge.service.errors import InvalidRequestError
from chatforge.service.protocol import (
    ChoiceConstraint, FunctionTool, JsonObject, JsonSchema, LarkGrammar, OutputFormat, Regex, ToolCall, ToolCallDelta,
    ToolCallStart, ToolChoice,
)


def tools(wire: list[Tool] | None) -> list[FunctionTool]:
    return [FunctionTool(t.function.name, t.function.parameters, t.function.description, bool(t.function.strict))
            for t in wire or []]


def tool_choice(wire: ToolChoiceWire | None) -> ToolChoice | None:
    if wire is None:
        return None  # the service's default: auto with tools, none without
    if isinstance(wire, NamedToolChoice):
        return ToolChoice("function", wire.function.name)
    return ToolChoice(wire)


def past_calls(calls: list[MessageToolCall] | None) -> list[ToolCall]:
    return [ToolCall(c.id, c.function.name, c.function.arguments) for c in calls or []]


def output_format(response_format, structured: StructuredOutputs | None) -> OutputFormat | None:
    """The content's format from `response_format` (OpenAI's, or TGI's on the successor route)
    or vLLM's `structured_outputs`; both at once is refused."""
    given = response_format is not None and not isinstance(response_format, TextFormat)
    if given and structured is not None:
        raise InvalidRequestError("give either response_format or structured_outputs, not both", param="structured_outputs")
    if structured is not None:
        return _structured_outputs(structured)
    if isinstance(response_format, JsonSchemaResponseFormat):
        return OutputFormat(JsonSchema(response_format.json_schema.schema_), "response_format", "json_schema")
    if isinstance(response_format, TgiJsonObjectFormat) and response_format.value is not None:
        return OutputFormat(JsonSchema(response_format.value), "response_format", "json_schema")
    if isinstance(response_format, (JsonObjectResponseFormat, TgiJsonObjectFormat)):
        return OutputFormat(JsonObject(), "response_format", "json_object")
    if isinstance(response_format, TgiJsonFormat):
        return OutputFormat(JsonSchema(response_format.value), "response_format", "json_schema")
    if isinstance(response_format, TgiRegexFormat):
        return OutputFormat(Regex(response_format.value), "response_format", "regex")
    return None


def _structured_outputs(s: StructuredOutputs) -> OutputFormat:
    given = [name for name in ("json_", "regex", "choice", "grammar") if getattr(s, name) is not None]
    if len(given) != 1:
        raise InvalidRequestError("structured_outputs takes exactly one of json, regex, choice and grammar",
                                  param="structured_outputs")
    (name,) = given
    if name == "json_":
        return OutputFormat(JsonSchema(_schema_value(s.json_)), "structured_outputs.json", "json_schema")
    if name == "regex":
        return OutputFormat(Regex(s.regex), "structured_outputs.regex", "regex")
    if name == "choice":
        return OutputFormat(ChoiceConstraint(tuple(s.choice)), "structured_outputs.choice", "choice")
    return OutputFormat(LarkGrammar(s.grammar), "structured_outputs.grammar", "grammar")


def _schema_value(value: dict[str, Any] | bool | str) -> dict[str, Any] | bool:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise InvalidRequestError("structured_outputs.json is not a JSON schema: not JSON", param="structured_outputs.json") from None


# -- responses -----------------------------------------------------------------------------------
def message_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def delta_tool_calls(events: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """One `delta.tool_calls` entry per call start, and one per run of a call's fragments."""
    entries: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, ToolCallStart):
            entries.append({"index": e.index, "id": e.id, "type": "function", "function": {"name": e.name, "arguments": ""}})
        elif entries and entries[-1]["index"] == e.index and "id" not in entries[-1]:
            entries[-1]["function"]["arguments"] += e.text
        else:
            entries.append({"index": e.index, "function": {"arguments": e.text}})
    return entries
