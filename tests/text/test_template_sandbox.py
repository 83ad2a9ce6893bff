"""Chat templates are untrusted code: escapes fail with a typed error and run nothing; limits
stop templates that would stall or exhaust the server."""

from __future__ import annotations

import time

import pytest

from chatforge.text.chat_template import ChatTemplate, ChatTemplateError, TemplateLimits

MESSAGES = [{"role": "user", "content": "hi"}]


def render_error(source, limits=TemplateLimits(), **kwargs):
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate(source, limits=limits).render(MESSAGES, **kwargs)
    return info.value


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__ }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch MARKER') }}",
    "{{ namespace.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('MARKER', 'w') }}",
    "{{ strftime_now.__globals__.__builtins__.exec(\"open('MARKER', 'w')\") }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ messages['__class__'] }}",
    "{% set ns = namespace() %}{% set ns._Namespace__attrs = {} %}",
    "{{ ('a' * 1000).translate({97: 'b' * 1000000}) }}",
])
def test_escapes_fail_as_security_errors_and_run_nothing(source, tmp_path):
    marker = tmp_path / "pwned"
    error = render_error(source.replace("MARKER", str(marker)))
    assert error.kind == "security"
    assert not marker.exists()


@pytest.mark.parametrize("source", [
    "{{ items.append(3) }}",
    "{% set _ = items.pop() %}",
    "{{ items.clear() }}",
    "{% set _ = config.update({'admin': true}) %}",
    "{{ config.setdefault('admin', true) }}",
])
def test_mutating_a_list_or_dict_is_refused_and_nothing_changes(source):
    items, config = [1, 2], {"admin": False}
    template = ChatTemplate(source + "{{ items | length }}{{ config.admin }}")
    with pytest.raises(ChatTemplateError) as info:
        template.render(MESSAGES, items=items, config=config)
    assert info.value.kind == "security"
    assert items == [1, 2] and config == {"admin": False}


def test_template_sees_copies_of_the_callers_data():
    messages = [{"role": "user", "content": "hi", "meta": {"n": 1}}]
    ChatTemplate("{% set m = messages[0] %}{{ m.meta.n }}").render(messages)
    assert messages == [{"role": "user", "content": "hi", "meta": {"n": 1}}]


def test_syntax_errors_are_typed():
    error = render_error("{% for m in messages %}{{ m.content }}")
    assert error.kind == "syntax" and "line 1" in str(error)
    assert render_error("{{ x | no_such_filter }}").kind == "syntax"


def test_undefined_names_and_runtime_failures_are_render_errors():
    assert render_error("{{ not_a_function() }}").kind == "render"
    assert render_error("{{ 1 / 0 }}").kind == "render"


@pytest.mark.parametrize("source", [
    "{{ 'a' * 100000000 }}",
    "{{ messages * 10000000 }}",
    "{% set a = 'x' * 1000000 %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a | length }}",
    "{% set a = 'x' * 1000000 %}{{ (a + a + a) | length }}",
    "{{ 'a' | center(1000000000) }}",
    "{{ ''.rjust(1000000000) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ ('x' * 2000) | replace('', 'y' * 2000) }}",
    "{{ ('x' * 2000).replace('', 'y' * 2000) }}",
    "{{ (range(1000) | list) | join('z' * 10000) }}",
    "{{ ('a\n' * 10000) | indent(1000) }}",
    "{{ 9 ** 999999 }}",
    "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}{% endmacro %}{% set y = m() %}",
    "{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}",
])
def test_size_limits_stop_runaway_values(source):
    started = time.perf_counter()
    assert render_error(source).kind == "limit"
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
])
def test_deadline_stops_endless_work(source):
    started = time.perf_counter()
    error = render_error(source, limits=TemplateLimits(max_seconds=0.2))
    assert error.kind == "limit" and "ran longer than 0.2 s" in str(error)
    assert time.perf_counter() - started < 2.0


def test_deep_recursion_is_a_limit_error():
    assert render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").kind == "limit"


def test_oversized_template_source_is_refused():
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate("x" * 300_000)
    assert info.value.kind == "limit"


def test_ordinary_work_under_the_limits_still_renders():
    source = (
        "{% set ns = namespace(n=0) %}{% for i in range(1000) %}{% set ns.n = ns.n + i %}{% endfor %}"
        "{{ ns.n }} {{ ('ab' * 3) | replace('b', 'c') }} {{ ['x', 'y'] | join('-') }} {{ 2 ** 10 }} {{ '%05d' % 42 }}"
    )
    assert ChatTemplate(source).render(MESSAGES) == "499500 acacac x-y 1024 00042"
