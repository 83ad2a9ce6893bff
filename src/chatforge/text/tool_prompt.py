"""Tools in the prompt: what the model reads about its tools, its past calls and their results.

`prepare_tool_prompt(template, messages, tools, choice)` returns the messages (and the `tools`
variable) to render with the model's chat template, and the `ToolCallFormat` in which the model
will write calls (for the grammar and the parser, text/tool_format.py and text/tool_calls.py).
Messages come in OpenAI's shape: `{"role", "content", "tool_calls": [{"id", "type", "function":
{"name", "arguments": "<JSON text>"}}], "tool_call_id"}`.

Two ways, chosen by reading the template's Jinja syntax tree:

- **The template knows tools** (it reads the `tools` variable): the transformers way. `tools` is
  the list of `{"type": "function", "function": {...}}`, assistant `tool_calls` keep their shape
  with `arguments` parsed to a dict (templates index into it), `tool` messages keep
  `tool_call_id`. The model writes calls in the Hermes format (`<tool_call>` blocks), which is
  what the templates that read `tools` among the families we serve (Qwen2.5, Hermes) teach.
  A template that reads `tools` but does not render past `tool_calls`, or has no `tool` role,
  gets those rewritten as the adapter does below.
- **The template knows nothing of tools** (SmolLM2's GGUF template, ChatML, most older ones):
  an adapter rewrites the conversation before the template sees it, in the model's own format:
  the tool list and how to call them are appended to the system message (one is added when
  there is none); past calls become the assistant's text, written as the model would write
  them; tool results become user turns `<tool_response>\\n...\\n</tool_response>`, consecutive
  results in one turn. SmolLM2 gets its own format (`<tool_call>[...]</tool_call>`, one JSON
  array); any other model the Hermes format.

With `tool_choice` "none" the model is not told about tools at all, but past calls and results
are still rendered as above. Errors in the history are `ToolSpecError`s naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from chatforge.text.chat_template import ChatTemplate
from chatforge.text.tool_format import HERMES, SMOLLM2, FunctionTool, ToolCallFormat, ToolChoice, ToolSpecError, check_tools

_SMOL_INSTRUCTION = (
    "You can call functions to answer. The functions you may call are described, as JSON schemas, "
    "inside <tools></tools>:\n<tools>{tools}</tools>\n\n"
    "To call functions, answer with nothing but a JSON list of calls inside <tool_call></tool_call>, "
    "each call an object with the function's name and its arguments, as many calls as the request needs:\n"
    '<tool_call>[\n{{"name": "first_function", "arguments": {{"argument": "value"}}}},\n'
    '{{"name": "second_function", "arguments": {{"argument": "value"}}}}\n]</tool_call>\n'
    "Results come back inside <tool_response></tool_response>."
)
_HERMES_INSTRUCTION = (
    "You may call one or more functions to help with the request. The functions are described, as "
    "JSON schemas, inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n\n"
    "For each call, answer with a JSON object holding the function's name and its arguments, inside "
    "<tool_call></tool_call>:\n"
    '<tool_call>\n{{"name": "function_name", "arguments": {{"argument_name": "value"}}}}\n</tool_call>\n'
    "Results come back inside <tool_response></tool_response>."
)


@dataclass(frozen=True)
class ToolSupport:
    """What a chat template does with tools, read from its syntax tree."""

    reads_tools: bool  # uses the `tools` variable
    renders_tool_calls: bool  # reads a message's `tool_calls`
    knows_tool_role: bool  # compares a role with "tool"


@dataclass(frozen=True)
class ToolPrompt:
    messages: list[dict[str, Any]]  # to render with the template
    tools: list[dict[str, Any]] | None  # the template's `tools` variable; None with the adapter or "none"
    format: ToolCallFormat  # how the model writes calls: build the grammar and the parser with it


def template_tool_support(template: ChatTemplate) -> ToolSupport:
    tree = template.syntax_tree()
    reads_tools = any(n.name == "tools" and n.ctx == "load" for n in tree.find_all(nodes.Name))
    attrs = {n.attr for n in tree.find_all(nodes.Getattr)}
    attrs |= {n.arg.value for n in tree.find_all(nodes.Getitem) if isinstance(n.arg, nodes.Const)}
    consts = {n.value for n in tree.find_all(nodes.Const)}
    return ToolSupport(reads_tools, "tool_calls" in attrs, "tool" in consts)


def tool_call_format(template: ChatTemplate, model_hint: str | None = None) -> ToolCallFormat:
    """The format the model writes calls in: SmolLM2's own, else Hermes."""
    if template_tool_support(template).reads_tools:
        return HERMES
    hint = (model_hint or "").lower()
    return SMOLLM2 if "smollm" in hint or "SmolLM" in template.source else HERMES


def prepare_tool_prompt(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[FunctionTool],
    choice: ToolChoice,
    *,
    model_hint: str | None = None,
    instruction: str | None = None,
) -> ToolPrompt:
    """`model_hint`: the model's id or name (picks SmolLM2's format). `instruction`: replaces the
    adapter's text on how to call tools (TGI's `tool_prompt`); the tool list still follows it."""
    check_tools(tools, choice)
    check_history(messages)
    support = template_tool_support(template)
    fmt = tool_call_format(template, model_hint)
    offered = choice.mode != "none" and bool(tools)
    rewritten = _rewrite_history(messages, fmt, keep_calls=support.reads_tools and support.renders_tool_calls,
                                 keep_tool_role=support.reads_tools and support.knows_tool_role)
    if support.reads_tools:
        return ToolPrompt(rewritten, [t.openai_dict() for t in tools] if offered else None, fmt)
    if offered:
        rewritten = _with_system_text(rewritten, _instruction(fmt, tools, instruction))
    return ToolPrompt(rewritten, None, fmt)


def check_history(messages: Sequence[Mapping[str, Any]]) -> None:
    """Every call's arguments are a JSON object; every tool result answers an earlier call."""
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        for j, call in enumerate(message.get("tool_calls") or ()):
            _arguments_dict(call, f"messages[{i}].tool_calls[{j}].function.arguments")
            if call.get("id") is not None:
                call_ids.add(call["id"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in call_ids:
            raise ToolSpecError("this tool message answers no earlier tool call", f"messages[{i}].tool_call_id")


def _arguments_dict(call: Mapping[str, Any], param: str) -> dict[str, Any]:
    arguments = (call.get("function") or {}).get("arguments")
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise ToolSpecError("the arguments are not valid JSON", param) from None
    if not isinstance(value, dict):
        raise ToolSpecError("the arguments must be a JSON object", param)
    return value


def _rewrite_history(messages, fmt: ToolCallFormat, *, keep_calls: bool, keep_tool_role: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    results_at = -1  # where in `out` the user turn of the latest tool results is
    for message in messages:
        message = dict(message)
        if message.get("role") == "tool" and not keep_tool_role:
            response = f"{fmt.result_open}\n{_text(message.get('content'))}\n{fmt.result_close}"
            if results_at == len(out) - 1:
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response})
                results_at = len(out) - 1
            continue
        calls = message.get("tool_calls")
        if calls and keep_calls:
            message["tool_calls"] = [_call_with_dict_arguments(c) for c in calls]
        elif calls:
            del message["tool_calls"]
            written = fmt.render_calls([(c["function"]["name"], _arguments_text(c)) for c in calls])
            text = _text(message.get("content"))
            message["content"] = f"{text}\n{written}" if text else written
        out.append(message)
    return out


def _call_with_dict_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    function = dict(call["function"])
    function["arguments"] = _arguments_dict(call, "tool_calls")
    return {**call, "function": function}


def _arguments_text(call: Mapping[str, Any]) -> str:
    arguments = call["function"].get("arguments")
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _text(content: Any) -> str:
    """A message's content as text (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, Mapping))


def _instruction(fmt: ToolCallFormat, tools: Sequence[FunctionTool], instruction: str | None) -> str:
    functions = [t.openai_dict()["function"] for t in tools]
    if fmt is SMOLLM2:
        listed = json.dumps(functions)
        default = _SMOL_INSTRUCTION
    else:
        listed = "\n".join(json.dumps({"type": "function", "function": f}) for f in functions)
        default = _HERMES_INSTRUCTION
    if instruction is not None:
        return f"{instruction}\n<tools>\n{listed}\n</tools>"
    return default.format(tools=listed)


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` appended to the first message when it is a system message, else a new system message."""
    if messages and messages[0].get("role") == "system":
        own = _text(messages[0].get("content"))
        return [{**messages[0], "content": f"{own}\n\n{text}" if own else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
