"""Limits on what one chat-template render may cost: wall time, and the size of every string,
list or number it builds.

Time: `render_deadline(seconds)` sets a deadline for the renders in its block (a context
variable, so threads and tasks each have their own); the sandbox calls `check_deadline()` on
every call, attribute lookup, operator, filter and every 64 items of a loop (`TimedIterable`).

Size: a value is checked after it is built (`SizeGuard.checked`), and the operations that can
multiply sizes in one step are checked before: repetition, padding widths, replacements, joins,
indentation, wrapping.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import SecurityError

_DEADLINE: ContextVar[float] = ContextVar("chat_template_deadline", default=math.inf)  # time.monotonic()
_WIDTH = re.compile(r"\d+")


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


@contextmanager
def render_deadline(seconds: float) -> Iterator[None]:
    """Templates rendered inside this block raise `TemplateDeadline` once `seconds` have passed."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    if time.monotonic() > _DEADLINE.get():
        raise TemplateDeadline()


class TimedIterable:
    """What a `{% for %}` loop iterates: the original iterable, with the deadline checked every
    64 items. Keeps `len()` when the original has one, so `loop.length` stays cheap."""

    def __init__(self, iterable: Any):
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)  # a TypeError for unsized iterables, which Jinja's loop expects

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(self._iterable):
            if i & 63 == 0:
                check_deadline()
            yield item


class SizeGuard:
    # translate() maps each character to any string: an amplifier with no cheap size bound.
    STR_METHODS_REFUSED = frozenset({"translate"})

    def __init__(self, limits: TemplateLimits):
        self.limits = limits

    def checked(self, value: Any) -> Any:
        """`value`, if it is within the limits."""
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

    def check_binop(self, operator: str, left: Any, right: Any) -> None:
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

    def check_str_method(self, s: str, name: str, args: tuple) -> tuple:
        """Checks a call of `s.<name>(*args)`; returns the args to call with (an iterator given
        to join() is read into a list first, to be measured)."""
        if name in self.STR_METHODS_REFUSED:
            raise SecurityError(f"str.{name} is not available to templates")
        if name in ("center", "ljust", "rjust", "zfill"):
            if args and isinstance(args[0], int):
                self.check_size(args[0])
        elif name == "expandtabs":
            tab = args[0] if args and isinstance(args[0], int) else 8
            self.check_size(len(s) + s.count("\t") * tab)
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            self.check_size(replaced_size(s, *args[:3]))
        elif name == "join" and args:
            items = list(args[0])
            self.check_size(sum(len(x) for x in items if isinstance(x, str)) + len(s) * max(len(items) - 1, 0))
            args = (items, *args[1:])
        return args


def replaced_size(s: str, old: str, new: str, count: Any = None) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


# Checks before a filter runs, on its bound arguments (by the filter function's own names).
def _width_arg(key: str) -> Callable[[SizeGuard, dict], None]:
    def check(guard: SizeGuard, a: dict) -> None:
        if isinstance(a.get(key), int):
            guard.check_size(a[key])
    return check


def _check_indent(guard: SizeGuard, a: dict) -> None:
    width = a["width"]
    per_line = width if isinstance(width, int) else len(str(width))
    text = str(a["s"])
    guard.check_size(len(text) + (text.count("\n") + 1) * per_line)


def _check_replace(guard: SizeGuard, a: dict) -> None:
    guard.check_size(replaced_size(str(a["s"]), str(a["old"]), str(a["new"]), a.get("count")))


def _check_wordwrap(guard: SizeGuard, a: dict) -> None:
    text, wrap = str(a["s"]), a.get("wrapstring") or "\n"
    guard.check_size(len(text) + (len(text) + 1) * len(wrap))


def _check_sum(guard: SizeGuard, a: dict) -> None:
    # Summing lists or strings (a non-numeric start) concatenates them; numbers are checked after.
    items = a["iterable"]
    if not isinstance(a.get("start", 0), (int, float)) and isinstance(items, (list, tuple)):
        guard.check_size(sum(len(x) for x in items if hasattr(x, "__len__")))


FILTER_PRECHECKS: dict[str, Callable[[SizeGuard, dict], None]] = {
    "center": _width_arg("width"),
    "batch": _width_arg("linecount"),
    "slice": _width_arg("slices"),
    "indent": _check_indent,
    "replace": _check_replace,
    "wordwrap": _check_wordwrap,
    "format": lambda guard, a: guard.check_widths(str(a["value"]), tuple(a.get("args", ()))),
    "sum": _check_sum,
}
