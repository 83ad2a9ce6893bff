"""What transformers gives chat templates beyond plain Jinja, written for chatforge's sandbox:
`raise_exception`, `strftime_now`, `tojson` without HTML escaping, a `namespace` that refuses
private names, a `dict` helper, and `{% generation %}` blocks."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.utils import Namespace

from chatforge.text.template_limits import TemplateLimitError

_MAX_JSON_INDENT = 64


class TemplateRaised(jinja2.TemplateError):
    """The template called `raise_exception(message)`: it refuses these messages."""


def raise_exception(message: Any) -> None:
    raise TemplateRaised(str(message))


def strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
           sort_keys: bool = False) -> str:
    """Jinja's own `tojson` escapes <, >, & and ' for HTML; prompts need the JSON as written."""
    if (isinstance(indent, int) and indent > _MAX_JSON_INDENT) or (
        isinstance(indent, str) and len(indent) > _MAX_JSON_INDENT
    ):
        raise TemplateLimitError(f"tojson indent is limited to {_MAX_JSON_INDENT}")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"namespace attributes may not start with '_' ({name!r})")


class TemplateNamespace(Namespace):
    """`namespace(...)` for `{% set ns.x = ... %}` in loops; private names are refused."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Namespace's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        Namespace.__setitem__(self, name, value)


class DictFactory:
    """`dict(a=1)` and `dict.fromkeys(...)` for templates, without handing them the `dict` type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict:
        return dict.fromkeys(keys, value)


class GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; when
    serving, its body renders as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)
