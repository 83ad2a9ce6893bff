"""The Jinja environment chat templates run in: transformers' template dialect, inside Jinja's
immutable sandbox, with limits on time and size.

A chat template is code from outside: from a model's files, or (Scale EGP) from the request
itself. Jinja's `ImmutableSandboxedEnvironment` already refuses private attributes
(`''.__class__`), mutation of lists and dicts (`.append`, `.update`) and unsafe `str.format`
fields. On top of it:

- what transformers gives templates: trim_blocks/lstrip_blocks, loop controls, `tojson` without
  HTML escaping, `raise_exception`, `strftime_now`, a `namespace` that refuses private names, a
  `dict` helper, and `{% generation %}` blocks (which only mark text for training masks);
- an unsafe attribute fails at once (Jinja would return an undefined value that fails only
  when used), so `{{ ''.__class__ }}` is an error, not an empty string;
- limits, so a template cannot stall or exhaust the server: a wall-clock deadline, checked as
  the template iterates (every `{% for %}` goes through a timed iterator), calls, looks up
  attributes and applies operators or filters; and a cap on the size of every string, list or
  number it builds (repetition, concatenation, `~`, joins, replacements, padding widths) and on
  its output. `lipsum` is removed (it writes as many words as asked for).

The guards cover Jinja's own operators, filters and `str` methods. They bound a template's cost;
they are not a process boundary.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension, loopcontrols
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

TEMPLATE_FILENAME = "<chat_template>"
# When the render running in this thread must stop (time.monotonic()); set by `render_deadline`.
_DEADLINE: ContextVar[float] = ContextVar("chat_template_deadline", default=math.inf)
# The filter every `{% for %}` loop's iterable is passed through (see ChatSandbox.compile_template).
_TIMED_ITER = "chatforge_timed_iter"


@dataclass(frozen=True)
class TemplateLimits:
    max_seconds: float = 2.0  # wall time of one render
    max_chars: int = 2_000_000  # any one string, list or dict the template builds, and its output
    max_int_bits: int = 1 << 16  # integers the template computes
    max_source_chars: int = 262_144  # the template itself


class TemplateLimitError(Exception):
    """A template built something larger than its limits allow."""


class TemplateDeadline(BaseException):
    """The render ran past its deadline. A BaseException, so no `except Exception` in Jinja's
    runtime can swallow it."""


class TemplateRaised(jinja2.TemplateError):
    """The template called `raise_exception(message)`."""


def _raise_exception(message: Any) -> None:
    raise TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """Jinja's own `tojson` escapes <, >, & and ' for HTML; prompts need the JSON as written."""
    if (isinstance(indent, int) and indent > 64) or (isinstance(indent, str) and len(indent) > 64):
        raise TemplateLimitError("tojson indent is limited to 64")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"namespace attributes may not start with '_' ({name!r})")


class _TemplateNamespace(Namespace):
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


class _DictFactory:
    """`dict(a=1)` and `dict.fromkeys(...)` for templates, without handing them the `dict` type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict:
        return dict.fromkeys(keys, value)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; when
    serving, its body renders as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:  # noqa: N802 - Jinja's visitor name
        # `a ~ b ~ c`: joined by the environment, which checks the size before building it.
        self.write("environment.join_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_WIDTH = re.compile(r"\d+")


class ChatSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    # translate() maps each character to any string: an amplifier with no cheap size bound.
    _STR_METHODS_REFUSED = frozenset({"translate"})

    def __init__(self, limits: TemplateLimits):
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                         extensions=[loopcontrols, _GenerationBlock])
        self.limits = limits
        self.globals.pop("lipsum", None)
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                            namespace=_TemplateNamespace, dict=_DictFactory())
        self.filters["tojson"] = _tojson
        self.filters["join"] = _join
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_TIMED_ITER] = self._timed_iterable

    def compile_template(self, source: str) -> jinja2.Template:
        """Parse, route every loop's iterable through the timed iterator, and compile."""
        tree = self.parse(source)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _TIMED_ITER, [], [], None, None, lineno=loop.lineno)
        code = self.compile(tree, filename=TEMPLATE_FILENAME)
        return self.template_class.from_code(self, code, self.make_globals(None))

    # -- time --------------------------------------------------------------------------------
    @staticmethod
    def tick() -> None:
        if time.monotonic() > _DEADLINE.get():
            raise TemplateDeadline()

    def _timed_iterable(self, iterable: Any) -> _TimedIterable:
        return _TimedIterable(self, iterable)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    # -- size checks -------------------------------------------------------------------------
    def checked(self, value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > self.limits.max_chars:
            raise TemplateLimitError(f"a value of {len(value)} items exceeds the limit of {self.limits.max_chars}")
        if isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise TemplateLimitError(f"an integer of {value.bit_length()} bits exceeds the limit")
        return value

    def check_size(self, size: int) -> None:
        if size > self.limits.max_chars:
            raise TemplateLimitError(f"a value of {size} characters would exceed the limit of {self.limits.max_chars}")

    def check_widths(self, fmt: str, args: Any = ()) -> None:
        """Padding widths written in a format string (`'%9999999d'`, `'{:>9999999}'`) or passed with `*`."""
        if any(len(w) > 9 or int(w) > self.limits.max_chars for w in _WIDTH.findall(fmt)):
            raise TemplateLimitError("format width exceeds the limit")
        if "*" in fmt:
            for arg in args if isinstance(args, tuple) else (args,):
                if isinstance(arg, int) and arg > self.limits.max_chars:
                    raise TemplateLimitError("format width exceeds the limit")

    def concat(self, pieces: Any) -> str:  # output buffers of macros, blocks and `{% set %}` blocks
        pieces = list(pieces)
        self.check_size(sum(len(p) for p in pieces))
        return "".join(pieces)

    def join_checked(self, parts: tuple) -> str:
        return self.concat([str(p) for p in parts])

    # -- operators and calls -----------------------------------------------------------------
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
                    self.check_size(len(seq) * n)
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > self.limits.max_int_bits:
                    raise TemplateLimitError("integer product exceeds the limit")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * left.bit_length() > self.limits.max_int_bits:
                    raise TemplateLimitError("integer power exceeds the limit")
        elif operator == "%" and isinstance(left, str):
            self.check_widths(left, right)
        return self.checked(self.binop_table[operator](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", None)
        if isinstance(owner, str) and name:
            args = __self._check_str_method(owner, name, args)
        return __self.checked(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            self.check_widths(value.__self__)
        return wrapped

    def _check_str_method(self, s: str, name: str, args: tuple) -> tuple:
        if name in self._STR_METHODS_REFUSED:
            raise jinja2.exceptions.SecurityError(f"str.{name} is not available to templates")
        if name in ("center", "ljust", "rjust", "zfill"):
            if args and isinstance(args[0], int):
                self.check_size(args[0])
        elif name == "expandtabs":
            tab = args[0] if args and isinstance(args[0], int) else 8
            self.check_size(len(s) + s.count("\t") * tab)
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            self.check_size(_replaced_size(s, *args[:3]))
        elif name == "join" and args:
            items = list(args[0])
            self.check_size(sum(len(x) for x in items if isinstance(x, str)) + len(s) * max(len(items) - 1, 0))
            args = (items, *args[1:])
        return args

    def _guard_filter(self, name: str, func: Any) -> Any:
        precheck = _FILTER_PRECHECKS.get(name)
        signature = inspect.signature(func) if precheck else None

        @functools.wraps(func)  # keeps Jinja's pass_context/pass_environment marker
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            if precheck is not None:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                precheck(self, bound.arguments)
            return self.checked(func(*args, **kwargs))

        return guarded


class _TimedIterable:
    """What a `{% for %}` loop iterates: the original iterable, with the deadline checked every
    64 items. Keeps `len()` when the original has one, so `loop.length` stays cheap."""

    def __init__(self, env: ChatSandbox, iterable: Any):
        self._env = env
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)  # a TypeError for unsized iterables, which Jinja's loop expects

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(self._iterable):
            if i & 63 == 0:
                self._env.tick()
            yield item


def _replaced_size(s: str, old: str, new: str, count: Any = None) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


@jinja2.pass_environment
def _join(environment: ChatSandbox, value: Any, d: str = "", attribute: Any = None) -> str:
    """Jinja's `join`, sizing the result before it is built."""
    if attribute is not None:
        value = map(make_attrgetter(environment, attribute), value)
    parts = [str(x) for x in value]
    environment.check_size(sum(map(len, parts)) + len(str(d)) * max(len(parts) - 1, 0))
    return str(d).join(parts)


def _width_arg(key: str):
    def check(env: ChatSandbox, a: dict) -> None:
        if isinstance(a.get(key), int):
            env.check_size(a[key])
    return check


def _check_indent(env: ChatSandbox, a: dict) -> None:
    width = a["width"]
    per_line = width if isinstance(width, int) else len(str(width))
    text = str(a["s"])
    env.check_size(len(text) + (text.count("\n") + 1) * per_line)


def _check_replace(env: ChatSandbox, a: dict) -> None:
    env.check_size(_replaced_size(str(a["s"]), str(a["old"]), str(a["new"]), a.get("count")))


def _check_wordwrap(env: ChatSandbox, a: dict) -> None:
    text, wrap = str(a["s"]), a.get("wrapstring") or "\n"
    env.check_size(len(text) + (len(text) + 1) * len(wrap))


def _check_sum(env: ChatSandbox, a: dict) -> None:
    # Summing lists or strings (a non-numeric start) concatenates them; numbers are checked after.
    items = a["iterable"]
    if not isinstance(a.get("start", 0), (int, float)) and isinstance(items, (list, tuple)):
        env.check_size(sum(len(x) for x in items if hasattr(x, "__len__")))


_FILTER_PRECHECKS = {
    "center": _width_arg("width"),
    "batch": _width_arg("linecount"),
    "slice": _width_arg("slices"),
    "indent": _check_indent,
    "replace": _check_replace,
    "wordwrap": _check_wordwrap,
    "format": lambda env, a: env.check_widths(str(a["value"]), tuple(a.get("args", ()))),
    "sum": _check_sum,
}


@contextmanager
def render_deadline(seconds: float) -> Iterator[None]:
    """Templates rendered inside this block raise `TemplateDeadline` once `seconds` have passed."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)
