"""One completion's tokens read back as content and tool calls (text/output_reader.py): stop
strings cut the content but never a call, a `leading` format finds calls only at the start, and
token-by-token reading gives what one push gives."""

from __future__ import annotations

import dataclasses

import pytest

from chatforge.text.output_reader import OutputReader
from chatforge.text.tool_calls import ToolCallArguments, ToolCallStart
from chatforge.text.tool_format import HERMES, SMOLLM2

CALL = '{"name": "note", "arguments": {"text": "line one\\nline two END", "n": 1}}'


def read(tokenizer, text, stop=(), fmt=SMOLLM2, one_by_one=True):
    """(content, calls as (name, arguments), stop string) of `text` read as generated tokens."""
    reader = OutputReader(tokenizer, stop, fmt)
    ids = tokenizer.encode(text)
    pieces = [[t] for t in ids] if one_by_one else [ids]
    steps = [reader.push(p) for p in pieces]
    if not any(s.stop for s in steps):
        steps.append(reader.finish())
    content = "".join(s.text for s in steps)
    calls: list[list[str]] = []
    for event in (e for s in steps for e in s.tool_calls):
        if isinstance(event, ToolCallStart):
            assert event.index == len(calls) and event.id.startswith("call_")
            calls.append([event.name, ""])
        else:
            assert isinstance(event, ToolCallArguments)
            calls[event.index][1] += event.text
    stops = [s.stop for s in steps if s.stop]
    return content, [tuple(c) for c in calls], stops[0] if stops else None


@pytest.mark.parametrize("one_by_one", [True, False])
def test_stop_strings_never_cut_a_call(smol, one_by_one):
    text = f"<tool_call>[{CALL}]</tool_call>"
    content, calls, stop = read(smol, text, stop=["\n", "END", "}"], one_by_one=one_by_one)
    assert (content, calls, stop) == ("", [("note", '{"text": "line one\\nline two END", "n": 1}')], None)


@pytest.mark.parametrize("one_by_one", [True, False])
def test_a_stop_string_in_the_content_ends_the_answer_before_any_call(smol, one_by_one):
    content, calls, stop = read(smol, f"Let me see. END of text <tool_call>[{CALL}]</tool_call>", stop=["END"],
                                one_by_one=one_by_one)
    assert (content, calls, stop) == ("Let me see. ", [], "END")


def test_content_held_for_a_stop_string_is_released_when_a_call_begins(smol):
    # "EN" could begin "END" until the call proves it does not
    content, calls, stop = read(smol, f"Checking EN<tool_call>[{CALL}]</tool_call>", stop=["END"])
    assert (content, [name for name, _ in calls], stop) == ("Checking EN", ["note"], None)


def test_without_tools_stop_strings_apply_to_all_text(smol):
    reader = OutputReader(smol, ["}"], None)
    step = reader.push(smol.encode('{"a": 1} and more'))
    assert (step.text, step.tool_calls, step.stop) == ('{"a": 1', [], "}")
    assert reader.push(smol.encode("x")).text == "" and reader.calls == []


@pytest.mark.parametrize("fmt", [SMOLLM2, HERMES])
def test_a_leading_format_reads_calls_only_at_the_start(smol, fmt):
    leading = dataclasses.replace(fmt, leading=True)
    json_text = '{"answer": "write <tool_call>[{\\"name\\": \\"x\\"}] here"}'
    assert read(smol, json_text, fmt=leading) == (json_text, [], None)
    call = fmt.render_calls([("note", '{"n": 1}')])
    assert read(smol, "  " + call, fmt=leading) == ("", [("note", '{"n": 1}')], None)
    # the start of the marker alone, then the output ends: content
    assert read(smol, "<tool_ca", fmt=leading) == ("<tool_ca", [], None)


def test_max_tokens_inside_a_call_keeps_what_was_sent_and_says_so(smol):
    reader = OutputReader(smol, (), SMOLLM2)
    reader.push(smol.encode('<tool_call>[{"name": "note", "arguments": {"text": "unfin'))
    end = reader.finish()
    assert end.text == "" and reader.truncated
    assert [(c.name, c.arguments) for c in reader.calls] == [("note", '{"text": "unfin')]


@pytest.mark.parametrize("fmt", [SMOLLM2, dataclasses.replace(SMOLLM2, leading=True)])
def test_max_tokens_inside_the_opening_marker_leaves_neither_call_nor_markup(smol, fmt):
    # (a leading format's output that began with content is all content, markers included)
    for text in ("<", "  <tool_c") if fmt.leading else ("<", "Let me check. <tool_c"):
        reader = OutputReader(smol, (), fmt)
        sent = reader.push(smol.encode(text)).text
        end = reader.finish(cut=True)
        assert "<" not in sent + end.text and end.tool_calls == [] and reader.calls == []
        assert sent + end.text == text.partition("<")[0].rstrip()
    # an output that ended by itself with it wrote it as text
    reader = OutputReader(smol, (), SMOLLM2)
    assert reader.push(smol.encode("Use a <")).text + reader.finish().text == "Use a <"
