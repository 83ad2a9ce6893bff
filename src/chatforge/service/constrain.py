"""A request's tools and output format, before admission: the conversation as the chat template
will read it (tool list, past calls, tool results: text/tool_prompt.py), and the grammar that
enforces `tool_choice` or the output format, compiled for the model (text/structured.py).

Everything wrong with them is an `InvalidRequestError` naming the field (`tools[1].function.name`,
`messages[3].tool_call_id`, `response_format`, ...) raised here, so nothing is queued or reserved
for a request that cannot be served. Which constraint a request gets:

- tools with tool_choice `auto`, `required` or a named function: the tool-call grammar
  (text/tool_format.py), and the answer is parsed for calls with the same format. With `auto`
  and an output format too, the answer is either the formatted content or calls from its first
  token (with `required` or a named function the answer is calls: no content to format);
- otherwise the output format's grammar, if any;
- otherwise, when the conversation shows tool calls (tool_choice `none`, or history only), free
  text that never opens a call: no markup reaches the content;
- otherwise no grammar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chatforge.service.catalog import ServedModel
from chatforge.service.errors import EngineUnavailableError, InvalidRequestError
from chatforge.service.protocol import ChatMessage, ChatRequest, ToolChoice
from chatforge.text.chat_template import ChatTemplate
from chatforge.text.structured import (
    CompiledGrammar, Constraint, GrammarVocabularyError, JsonSchema, StructuredOutputError, lark_expression,
)
from chatforge.text.tool_format import ToolCallFormat, ToolSpecError, check_tools, no_call_grammar, tool_call_grammar
from chatforge.text.tool_prompt import prepare_tool_prompt

NONE, AUTO = ToolChoice("none"), ToolChoice("auto")


@dataclass(frozen=True)
class RenderInput:
    """What the chat template renders: the messages and its `tools` variable."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_format: ToolCallFormat | None  # how the model writes calls; None when no tool is in the conversation


@dataclass(frozen=True)
class Constrained:
    grammar: CompiledGrammar | None
    kind: str | None  # for metrics: "tools", or the output format's kind; None without a grammar
    tool_format: ToolCallFormat | None  # parse the answer for calls in this format; None: no calls


def tool_choice(req: ChatRequest) -> ToolChoice:
    if req.tool_choice is not None:
        return req.tool_choice
    return AUTO if req.tools else NONE


def uses_tools(req: ChatRequest, messages: Sequence[ChatMessage]) -> bool:
    """Tools offered, or a history with calls or tool results: the tool prompt adapter renders it."""
    return bool(req.tools) or any(m.tool_calls or m.role == "tool" for m in messages)


def wire_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as chat templates (and the tool prompt adapter) read them: OpenAI's shape."""
    out = []
    for m in messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name:
            message["name"] = m.name
        if m.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def render_input(model: ServedModel, template: ChatTemplate, req: ChatRequest, messages: Sequence[ChatMessage]) -> RenderInput:
    wire = wire_messages(messages)
    if not uses_tools(req, messages):
        try:
            check_tools([], tool_choice(req))  # a tool_choice that asks for calls needs tools
        except ToolSpecError as e:
            raise InvalidRequestError(e.message, param=e.param) from None
        return RenderInput(wire, None, None)
    try:
        p = prepare_tool_prompt(template, wire, req.tools, tool_choice(req), instruction=req.tool_prompt,
                                model_hint=" ".join((model.model_id, *model.aliases)))  # names tell SmolLM2 apart
    except ToolSpecError as e:
        raise InvalidRequestError(e.message, param=e.param) from None
    return RenderInput(p.messages, p.tools, p.format)


def constrain(model: ServedModel, req: ChatRequest, tool_format: ToolCallFormat | None) -> Constrained:
    """The request's compiled grammar, and the format to parse its answer for calls with (None:
    no calls possible). `tool_format`: the one the tool prompt taught, None when no tool is in
    the conversation. Takes 1-60 ms, the model's first grammar ~1 s more (llguidance's copy of
    the vocabulary): call it off the event loop."""
    output, choice = req.output_format, tool_choice(req)
    if tool_format is None or choice.mode == "none" or not req.tools:
        if output is not None:
            return Constrained(_compile(model, output.constraint, lambda: (output.param, None)), output.kind, None)
        if tool_format is not None:  # a history with calls: no markup may start another one
            return Constrained(_compile(model, no_call_grammar(tool_format), lambda: ("tool_choice", None)), "tools", None)
        return Constrained(None, None, None)
    content = None
    if output is not None:  # checked even when this answer can only be calls: never accepted unenforceable
        _compile(model, output.constraint, lambda: (output.param, None))
    if output is not None and choice.mode == "auto":
        try:
            content = lark_expression(output.constraint, model.structured.limits)
        except StructuredOutputError as e:
            raise InvalidRequestError(e.message, param=output.param) from None
        tool_format = dataclasses.replace(tool_format, leading=True)
    try:
        grammar = tool_call_grammar(tool_format, req.tools, choice, req.parallel_tool_calls, content=content)
    except ToolSpecError as e:
        raise InvalidRequestError(e.message, param=e.param) from None
    return Constrained(_compile(model, grammar, lambda: _culprit(model, req)), "tools", tool_format)


def _compile(model: ServedModel, constraint: Constraint, culprit: Callable[[], tuple[str, str | None]]) -> CompiledGrammar:
    """Compiled, or an InvalidRequestError naming `culprit()`'s field (and its own message, if it
    has one); an EngineUnavailableError when this model cannot enforce any constraint."""
    try:
        return model.structured.compile(constraint)
    except GrammarVocabularyError as e:
        raise EngineUnavailableError(f"{model.model_id}: {e}") from None
    except StructuredOutputError as e:
        param, message = culprit()
        raise InvalidRequestError(f"{param} cannot be enforced: {message or e.message}", param=param) from None


def _culprit(model: ServedModel, req: ChatRequest) -> tuple[str, str | None]:
    """Which function's schema broke a tool-call grammar (which holds them all): each is
    compiled alone, on this error path only."""
    for i, tool in enumerate(req.tools):
        try:
            model.structured.compile(JsonSchema(tool.parameters if tool.parameters is not None else {}, tool.strict))
        except StructuredOutputError as e:
            return f"tools[{i}].function.parameters", e.message
    return "tools", None
