"""Chat templates: a model's Jinja template turns a list of messages into its prompt text.

`ChatTemplate(source, special_tokens).render(messages, ...)` renders exactly what transformers'
`apply_chat_template(..., tokenize=False)` renders for the same template and messages: the same
Jinja dialect (see `template_sandbox`), the same variables (`messages`, `tools`, `documents`,
`add_generation_prompt`, the special tokens such as `bos_token`, and any extra keyword, as
chat_template_kwargs), and the same preparation of the messages:

- keys whose value is None are dropped (an OpenAI assistant turn with `content: null` and tool
  calls), since templates test for a missing key, not for None;
- a message's reasoning under any of `reasoning_content`, `thinking` or `reasoning` is offered
  under `reasoning_content` and `thinking` too, the names templates read;
- everything is copied into plain JSON-like data (dicts, lists, str, int, float, bool, None;
  pydantic models and dataclasses are dumped), so the template sees no caller object and cannot
  change one. Anything else is a `ChatTemplateError` of kind "input".

Content given as a list of parts (`[{"type": "text", "text": ...}]`) is passed through as it is,
as transformers does: the template decides. Templates written for such lists iterate over them;
others (SmolLM2's, for one) only concatenate strings and fail on a list, which is why the API
joins a message's text parts into one string before it gets here (api/wire.py, `join_text_parts`).

Compilation is cached per (source, limits); a template that does not compile, raises, breaks
the sandbox or its limits is a `ChatTemplateError`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes

from chatforge.text.errors import ChatTemplateError
from chatforge.text.template_globals import TemplateRaised
from chatforge.text.template_limits import TemplateDeadline, TemplateLimitError, TemplateLimits, render_deadline
from chatforge.text.template_sandbox import ChatSandbox

__all__ = ["ChatTemplate", "ChatTemplateError", "DEFAULT_CHAT_TEMPLATE", "TemplateLimits"]

# ChatML (templates/chatml.jinja, the named template "chatml"). It accepts content as a string or
# as a list of text parts.
DEFAULT_CHAT_TEMPLATE = (Path(__file__).parent / "templates" / "chatml.jinja").read_text(encoding="utf-8")
_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt"})
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplate:
    """One compiled chat template and the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None,
                 *, limits: TemplateLimits = TemplateLimits()):
        if not isinstance(source, str):
            raise ChatTemplateError(f"a chat template is a string, not {type(source).__name__}", "input")
        if len(source) > limits.max_source_chars:
            raise ChatTemplateError(
                f"the chat template has {len(source)} characters; the limit is {limits.max_source_chars}", "limit"
            )
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.limits = limits
        self._template = _compile(source, limits)

    @classmethod
    def default(cls, special_tokens: Mapping[str, str] | None = None) -> ChatTemplate:
        return cls(DEFAULT_CHAT_TEMPLATE, special_tokens)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, name: str | None = None, *, with_tools: bool = False) -> ChatTemplate | None:
        """The tokenizer's template (a named one, or "tool_use" when tools are used and the model
        has one), or None when the model has none (text/named_templates.py picks one then)."""
        source = tokenizer.get_chat_template(name, with_tools=with_tools)
        return None if source is None else cls(source, tokenizer.special_tokens)

    def syntax_tree(self) -> nodes.Template:
        """The template's parsed Jinja tree, for capability checks (text/tool_prompt.py)."""
        return self._template.environment.parse(self.source)

    def render(self, messages: Sequence[Any], /, *, add_generation_prompt: bool = True, tools: Sequence[Any] | None = None,
               documents: Sequence[Any] | None = None, **kwargs: Any) -> str:
        """The prompt text for `messages`. Extra keywords become template variables (they override
        the special tokens of the same name)."""
        clash = _RESERVED.intersection(kwargs)
        if clash:
            raise ChatTemplateError(f"{sorted(clash)} cannot be passed as extra template variables", "input")
        variables = {
            **self.special_tokens,
            **_plain(kwargs),
            "messages": _prepare_messages(messages),
            "tools": _plain(list(tools)) if tools is not None else None,
            "documents": _plain(list(documents)) if documents is not None else None,
            "add_generation_prompt": bool(add_generation_prompt),
        }
        return _render(self._template, variables, self.limits)


@functools.lru_cache(maxsize=8)
def _environment(limits: TemplateLimits) -> ChatSandbox:
    return ChatSandbox(limits)


@functools.lru_cache(maxsize=128)
def _compile(source: str, limits: TemplateLimits) -> jinja2.Template:
    try:
        return _environment(limits).compile_template(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template syntax error (line {exc.lineno}): {exc.message}", "syntax") from None
    except jinja2.TemplateError as exc:  # e.g. an unknown filter, found at compile time
        raise ChatTemplateError(f"chat template does not compile: {exc}", "syntax") from None


def _render(template: jinja2.Template, variables: dict[str, Any], limits: TemplateLimits) -> str:
    pieces: list[str] = []
    size = 0
    try:
        with render_deadline(limits.max_seconds):
            for piece in template.generate(**variables):
                size += len(piece)
                if size > limits.max_chars:
                    raise TemplateLimitError(f"the rendered prompt exceeds {limits.max_chars} characters")
                pieces.append(piece)
    except TemplateDeadline:
        raise ChatTemplateError(f"the chat template ran longer than {limits.max_seconds} s", "limit") from None
    except TemplateLimitError as exc:
        raise ChatTemplateError(f"the chat template exceeded a limit: {exc}", "limit") from None
    except (RecursionError, MemoryError):
        raise ChatTemplateError("the chat template exhausted its resources", "limit") from None
    except TemplateRaised as exc:
        raise ChatTemplateError(exc.message or "the chat template rejected the messages", "raised") from None
    except jinja2.exceptions.SecurityError as exc:
        raise ChatTemplateError(f"the chat template did something the sandbox forbids: {exc}", "security") from None
    except Exception as exc:  # undefined names, type errors, ...: the template failed on this input
        raise ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {exc}", "render") from None
    return "".join(pieces)


def _prepare_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of messages", "input")
    prepared = []
    for message in _plain(list(messages)):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"each message must be a mapping, not {type(message).__name__}", "input")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_KEYS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _plain(value: Any) -> Any:
    """A copy of `value` made of JSON-like builtins only (see the module docstring)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):  # str subclasses (enums, ...) lose their extra methods
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    raise ChatTemplateError(f"a chat template cannot be given a {type(value).__name__}", "input")
