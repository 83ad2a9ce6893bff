"""The Jinja environment chat templates run in: transformers' template dialect, inside Jinja's
immutable sandbox, with limits on time and size.

A chat template is code from outside: from a model's files, or (Scale EGP) from the request
itself. Jinja's `ImmutableSandboxedEnvironment` already refuses private attributes
(`''.__class__`), mutation of lists and dicts (`.append`, `.update`) and unsafe `str.format`
fields. On top of it:

- what transformers gives templates (`template_globals`): trim_blocks/lstrip_blocks, loop
  controls, `tojson`, `raise_exception`, `strftime_now`, `namespace`, `dict`, `{% generation %}`;
- an unsafe attribute fails at once (Jinja would return an undefined value that fails only
  when used), so `{{ ''.__class__ }}` is an error, not an empty string;
- limits (`template_limits`), so a template cannot stall or exhaust the server: a deadline
  checked as it loops, calls, looks up attributes and applies operators or filters; a cap on
  the size of what it builds (including `~` joins and the buffers of macros and blocks) and on
  its output. `lipsum` is removed (it writes as many words as asked for).

The guards cover Jinja's own operators, filters and `str` methods. They bound a template's cost;
they are not a process boundary.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import loopcontrols
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatforge.text.template_globals import (
    DictFactory, GenerationBlock, TemplateNamespace, raise_exception, strftime_now, tojson,
)
from chatforge.text.template_limits import (
    FILTER_PRECHECKS, SizeGuard, TemplateLimits, TimedIterable, check_deadline,
)

TEMPLATE_FILENAME = "<chat_template>"
# The filter every `{% for %}` loop's iterable is passed through (see `compile_template`).
_TIMED_ITER = "chatforge_timed_iter"


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:  # noqa: N802 - Jinja's visitor name
        # `a ~ b ~ c`: joined by the environment, which checks the size before building it.
        self.write("environment.join_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class ChatSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: TemplateLimits):
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                         extensions=[loopcontrols, GenerationBlock])
        self.limits = limits
        self.guard = SizeGuard(limits)
        self.globals.pop("lipsum", None)
        self.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                            namespace=TemplateNamespace, dict=DictFactory())
        self.filters["tojson"] = tojson
        self.filters["join"] = _join
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_TIMED_ITER] = TimedIterable

    def compile_template(self, source: str) -> jinja2.Template:
        """Parse, route every loop's iterable through the timed iterator, and compile."""
        tree = self.parse(source)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _TIMED_ITER, [], [], None, None, lineno=loop.lineno)
        code = self.compile(tree, filename=TEMPLATE_FILENAME)
        return self.template_class.from_code(self, code, self.make_globals(None))

    # -- Jinja's sandbox hooks ---------------------------------------------------------------
    def getattr(self, obj: Any, attribute: str) -> Any:
        check_deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_deadline()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_deadline()
        self.guard.check_binop(operator, left, right)
        return self.guard.checked(self.binop_table[operator](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        check_deadline()
        owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", None)
        if isinstance(owner, str) and name:
            args = __self.guard.check_str_method(owner, name, args)
        return __self.guard.checked(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            self.guard.check_widths(value.__self__)
        return wrapped

    # -- output buffers ----------------------------------------------------------------------
    def concat(self, pieces: Any) -> str:  # how macros, blocks and `{% set %}` blocks join their output
        pieces = list(pieces)
        self.guard.check_size(sum(len(p) for p in pieces))
        return "".join(pieces)

    def join_checked(self, parts: tuple) -> str:
        return self.concat([str(p) for p in parts])

    def _guard_filter(self, name: str, func: Any) -> Any:
        precheck = FILTER_PRECHECKS.get(name)
        signature = inspect.signature(func) if precheck else None

        @functools.wraps(func)  # keeps Jinja's pass_context/pass_environment marker
        def guarded(*args: Any, **kwargs: Any) -> Any:
            check_deadline()
            if precheck is not None:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                precheck(self.guard, bound.arguments)
            return self.guard.checked(func(*args, **kwargs))

        return guarded


@jinja2.pass_environment
def _join(environment: ChatSandbox, value: Any, d: str = "", attribute: Any = None) -> str:
    """Jinja's `join`, sizing the result before it is built."""
    if attribute is not None:
        value = map(make_attrgetter(environment, attribute), value)
    parts = [str(x) for x in value]
    environment.guard.check_size(sum(map(len, parts)) + len(str(d)) * max(len(parts) - 1, 0))
    return str(d).join(parts)
