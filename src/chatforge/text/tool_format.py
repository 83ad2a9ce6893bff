"""Tools, `tool_choice`, and the text formats in which a model writes its tool calls.

A `ToolCallFormat` is the one place that knows a format's markup. The prompt adapter
(text/tool_prompt.py) writes past calls with it, `tool_call_grammar` forces it during decoding,
and the parser (text/tool_calls.py) reads it back: grammar and parser cannot disagree.

- `SMOLLM2`: one block holding a JSON array of calls (SmolLM2's own tool format):
  `<tool_call>[{"name": "f", "arguments": {...}}, {...}]</tool_call>`
- `HERMES`: one block per call, blocks separated by a newline (Hermes, Qwen2.5 and most open
  models trained on tools): `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`

The grammars (llguidance Lark, each function's `parameters` inlined with `%json`):
- `required`: a block from the first token, at least one call, each a tool of the list;
- a named function: a block with exactly one call, to that function;
- `auto`: free text, or text followed by calls: once the text contains the opening marker
  (a lazy lexeme), the rest is forced to be well-formed calls and nothing may follow them;
- `auto` with a content constraint (an output format, as a Lark expression): the content, or
  calls from the first token; the format is then `leading` (the parser looks for calls only at
  the start, so a JSON string holding the marker stays content);
- `parallel_tool_calls=False`: exactly one call;
- `none` (`no_call_grammar`): free text that never contains the opening marker, for a
  conversation whose history shows calls the model might imitate.
Free text (`auto`'s and `none`'s) never contains the format's markup (`<tool_`, `</tool_`):
in `auto` only the opening marker itself, which starts the calls.
The call wrapper `{"name": "<name>", "arguments": ` is forced byte for byte, so choosing the
name picks the function's own `%json` (its own strictness: a non-strict function's schema may
ignore keywords llguidance cannot enforce). Arguments use the bounded JSON whitespace of
text/structured.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatforge.text.structured import LarkGrammar, StructuredLimits, StructuredOutputError, check_schema, json_options

MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolSpecError(ValueError):
    """Tools or a tool choice that cannot be served. `param` names the field, e.g.
    "tools[2].function.parameters" or "tool_choice"."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class FunctionTool:
    name: str
    parameters: Mapping[str, Any] | None = None  # JSON schema of the arguments; None: no arguments
    description: str | None = None
    strict: bool = False  # True: a schema keyword llguidance cannot enforce is an error

    def openai_dict(self) -> dict[str, Any]:
        """The tool as OpenAI's wire format and transformers' chat templates spell it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters) if self.parameters is not None else dict(_NO_ARGUMENTS)
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "none" | "auto" | "required" | "function"
    function: str | None = None  # the function's name when mode is "function"

    def __post_init__(self) -> None:
        if self.mode not in ("none", "auto", "required", "function"):
            raise ValueError(f"unknown tool_choice mode {self.mode!r}")
        if (self.mode == "function") != (self.function is not None):
            raise ValueError("a function name goes with mode 'function', and only with it")


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    open: str  # the marker that starts a block (and triggers the grammar in auto mode)
    close: str  # the marker that ends a block
    array: bool  # True: one block holds a JSON array of calls; False: one call per block
    separator: str = field(default="\n")  # between blocks, when array is False
    leading: bool = False  # calls, if any, begin the output (auto with a content constraint)
    # How the prompt adapter wraps a tool's result (text/tool_prompt.py).
    result_open: str = "<tool_response>"
    result_close: str = "</tool_response>"
    # What begins any of the format's tags: never in free text. A small model echoes a tool's
    # result in its wrapper, or a near miss of it (`<tool_response]`), after reading one.
    markup: tuple[str, ...] = ("<tool_", "</tool_")

    def render_calls(self, calls: Sequence[tuple[str, str]]) -> str:
        """Past calls (name, arguments as JSON text, used verbatim) as the model writes them."""
        objects = [call_prefix(name) + arguments.strip() + "}" for name, arguments in calls]
        if self.array:
            return f"{self.open}[{', '.join(objects)}]{self.close}"
        return self.separator.join(f"{self.open}\n{obj}\n{self.close}" for obj in objects)


SMOLLM2 = ToolCallFormat("smollm2", "<tool_call>", "</tool_call>", array=True)
HERMES = ToolCallFormat("hermes", "<tool_call>", "</tool_call>", array=False)


def call_prefix(name: str) -> str:
    """The forced start of a call object, up to its arguments."""
    return '{"name": ' + json.dumps(name) + ', "arguments": '


def check_tools(tools: Sequence[FunctionTool], choice: ToolChoice, limits: StructuredLimits = StructuredLimits()) -> None:
    """Raise ToolSpecError naming the field when the tools or the choice cannot be served
    (parameter schemas within the size and depth limits; whether they compile is the grammar's)."""
    if len(tools) > MAX_TOOLS:
        raise ToolSpecError(f"at most {MAX_TOOLS} tools are supported, got {len(tools)}", "tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool.name, str) or not _NAME.fullmatch(tool.name):
            raise ToolSpecError("a function name must be 1-64 characters of a-z, A-Z, 0-9, _ or -", f"tools[{i}].function.name")
        if tool.name in seen:
            raise ToolSpecError(f"the function name {tool.name!r} is given twice", f"tools[{i}].function.name")
        seen.add(tool.name)
        params = tool.parameters
        if params is not None and (not isinstance(params, Mapping) or params.get("type", "object") != "object"):
            raise ToolSpecError("function parameters must be a JSON schema of type object", f"tools[{i}].function.parameters")
        try:
            check_schema(params if params is not None else _NO_ARGUMENTS, limits)
        except StructuredOutputError as e:
            raise ToolSpecError(e.message, f"tools[{i}].function.parameters") from None
    if choice.mode in ("required", "function") and not tools:  # "auto" with nothing to call is "none"
        raise ToolSpecError(f"tool_choice {choice.mode!r} needs tools", "tool_choice")
    if choice.mode == "function" and choice.function not in seen:
        raise ToolSpecError(f"tool_choice names the function {choice.function!r}, which is not in tools", "tool_choice")


def tool_call_grammar(
    fmt: ToolCallFormat,
    tools: Sequence[FunctionTool],
    choice: ToolChoice,
    parallel: bool = True,
    limits: StructuredLimits = StructuredLimits(),
    content: str | None = None,
) -> LarkGrammar | None:
    """The grammar that enforces `choice` in `fmt`; None for "none", or "auto" without tools
    (free text, no parsing).
    `content` (with "auto"): a Lark expression the content must match instead of free text
    (text/structured.py's `lark_expression`); parse the answer with `fmt` made `leading`."""
    check_tools(tools, choice)
    if choice.mode == "none" or not tools:
        return None
    chosen = [(i, t) for i, t in enumerate(tools) if choice.mode != "function" or t.name == choice.function]
    rules = []
    for i, tool in chosen:
        rules.append(f"call_{i}: {json.dumps(call_prefix(tool.name))} args_{i} \"}}\"")
        rules.append(f"args_{i}: %json {json.dumps(_arguments_schema(tool, i, limits))}")
    rules.append("call: " + " | ".join(f"call_{i}" for i, _ in chosen))
    single = not parallel or choice.mode == "function"
    rules.extend(_structure(fmt, single, lazy=choice.mode == "auto", content=content))
    return LarkGrammar("\n".join(rules) + "\n")


def no_call_grammar(fmt: ToolCallFormat) -> LarkGrammar:
    """Free text in which the format's opening marker never appears (tool_choice "none")."""
    return LarkGrammar(f"start: TEXT\n{_free_text('TEXT', *fmt.markup)}\n")


def _free_text(name: str, *never: str) -> str:
    """A lexeme of any text that contains none of `never`."""
    markers = "|".join(_regex_literal(m) for m in never)
    return f"{name}: /(.|\\n)*/ & ~/(.|\\n)*({markers})(.|\\n)*/"


def _regex_literal(text: str) -> str:
    """`text` as a regex between Lark's slashes (each sign in a class: `\\<` would be a word boundary)."""
    if any(ch in "]\\^-\n" for ch in text):
        raise ValueError(f"a marker the no-call grammar cannot spell: {text!r}")
    return "".join(ch if ch.isalnum() or ch == "_" else "\\/" if ch == "/" else f"[{ch}]" for ch in text)


def _arguments_schema(tool: FunctionTool, index: int, limits: StructuredLimits) -> dict[str, Any]:
    try:
        schema = check_schema(tool.parameters if tool.parameters is not None else _NO_ARGUMENTS, limits)
    except StructuredOutputError as e:
        raise ToolSpecError(e.message, f"tools[{index}].function.parameters") from None
    schema.pop("x-guidance", None)
    schema.setdefault("type", "object")  # arguments are an object even when the schema omits the type
    _close_objects(schema)
    return {"x-guidance": json_options(tool.strict), **schema}


_MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_LIST_KEYWORDS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_KEYWORDS = ("items", "additionalItems", "contains", "not", "if", "then", "else", "additionalProperties")
_OPEN_KEYWORDS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def _close_objects(schema: dict[str, Any]) -> None:
    """Objects with listed properties and nothing said about others get additionalProperties false.

    NOTE: JSON Schema allows unlisted properties by default, and a small model fills them with
    junk copied from the schema (`"maxLength": 20` next to `"city"`), which the caller's function
    then rejects. Arguments stay valid for the schema as given; a schema that wants extra keys
    says so. (xgrammar's default "strict mode" makes the same choice.)"""
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("properties"), dict) and not any(k in node for k in _OPEN_KEYWORDS):
            node["additionalProperties"] = False
        for key in _MAP_KEYWORDS:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
        for key in _LIST_KEYWORDS:
            if isinstance(node.get(key), list):
                stack.extend(node[key])
        for key in _SCHEMA_KEYWORDS:
            value = node.get(key)
            stack.extend(value if isinstance(value, list) else [value])


def _structure(fmt: ToolCallFormat, single: bool, lazy: bool, content: str | None) -> list[str]:
    """The rules around `call`: the blocks, their separators, and how the output starts."""
    o, c = json.dumps(fmt.open), json.dumps(fmt.close)
    ws = "WS: /[\\x20\\x0A]{1,4}/"
    if fmt.array:
        calls = "call" if single else 'call ("," WS? call)*'
        body = f'body: "[" WS? {calls} WS? "]" {c}'
        rest = "body"
    else:
        body = f'body: "\\n" call "\\n" {c}'
        rest = "body" if single else f"body ({json.dumps(fmt.separator)} {o} body)*"
    if lazy and content is not None:
        start = [f"start: content | {o} {rest}", f"content: {content}"]
    elif lazy:
        # Any text; or text up to the first opening marker (lazy: it ends there), then calls.
        start = [f"start: TEXT | text_then_open {rest}", _free_text("TEXT", *fmt.markup),
                 _free_text("PREFIX", *fmt.markup), f"text_then_open[lazy]: PREFIX {o}"]
    else:
        start = [f"start: {o} {rest}"]
    return [*start, body, ws]
