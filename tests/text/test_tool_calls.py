"""The incremental tool-call parser (text/tool_calls.py): what it reads out of whole answers,
and that any split of an answer into deltas gives the same events."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatforge.text.tool_calls import ContentDelta, ToolCallArguments, ToolCallParser, ToolCallStart, new_call_id
from chatforge.text.tool_format import HERMES, SMOLLM2

WEATHER = '{"name": "get_weather", "arguments": {"city": "Bern", "unit": "celsius"}}'
TRICKY = '{"name": "note", "arguments": {"text": "a } ] \\" <tool_call> </tool_call> \\\\", "n": [1, {"k": null}]}}'
EMPTY = '{"name": "now", "arguments": {}}'

ANSWERS = [
    (SMOLLM2, f"<tool_call>[{WEATHER}]</tool_call>"),
    (SMOLLM2, f"Sure, one moment.  \n<tool_call>[\n{WEATHER},\n{TRICKY}, {EMPTY}]</tool_call>\n"),
    (SMOLLM2, "A plain answer with a dangling <tool and a <tool_cal, kept as text.\n\n"),
    (SMOLLM2, "Two lines\n\nand  spaces   "),
    (SMOLLM2, f"<tool_call>[{WEATHER}, {{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Pa"),
    (SMOLLM2, '<tool_call>[{"name": "get_'),
    (SMOLLM2, "Text <tool_call>this is not a call"),
    (HERMES, f"Let me look.\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{EMPTY}\n</tool_call>"),
    (HERMES, f"<tool_call>\n{TRICKY}\n</tool_call>"),
]


def counter_ids():
    count = itertools.count()
    return lambda: f"call_{next(count)}"


def merged(events):
    """Adjacent fragments of the same kind joined: how a client assembles them."""
    out = []
    for e in events:
        if out and isinstance(e, ContentDelta) and isinstance(out[-1], ContentDelta):
            out[-1] = ContentDelta(out[-1].text + e.text)
        elif out and isinstance(e, ToolCallArguments) and isinstance(out[-1], ToolCallArguments) and out[-1].index == e.index:
            out[-1] = ToolCallArguments(e.index, out[-1].text + e.text)
        else:
            out.append(e)
    return out


def parse(fmt, pieces):
    parser = ToolCallParser(fmt, counter_ids())
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.finish()
    return events, parser


def test_calls_after_text_come_out_with_their_exact_argument_text():
    events, parser = parse(SMOLLM2, [ANSWERS[1][1]])
    assert merged(events) == [
        ContentDelta("Sure, one moment."),
        ToolCallStart(0, "call_0", "get_weather"),
        ToolCallArguments(0, '{"city": "Bern", "unit": "celsius"}'),
        ToolCallStart(1, "call_1", "note"),
        ToolCallArguments(1, json.dumps(json.loads(TRICKY)["arguments"])),
        ToolCallStart(2, "call_2", "now"),
        ToolCallArguments(2, "{}"),
    ]
    assert [json.loads(c.arguments) for c in parser.calls][1]["text"] == 'a } ] " <tool_call> </tool_call> \\'
    assert parser.content == "Sure, one moment." and not parser.truncated and not parser.malformed


def test_text_without_a_call_is_kept_whole_even_where_it_looks_like_a_marker():
    for text in (ANSWERS[2][1], ANSWERS[3][1]):
        events, parser = parse(SMOLLM2, [text])
        assert merged(events) == [ContentDelta(text)]
        assert parser.calls == []


def test_a_call_cut_short_keeps_what_was_sent_and_says_truncated():
    events, parser = parse(SMOLLM2, [ANSWERS[4][1]])
    assert [(c.name, c.arguments) for c in parser.calls] == [
        ("get_weather", '{"city": "Bern", "unit": "celsius"}'),
        ("get_weather", '{"city": "Pa'),
    ]
    assert parser.truncated and parser.content == ""
    events, parser = parse(SMOLLM2, [ANSWERS[5][1]])
    assert events == [] and parser.calls == [] and parser.truncated  # no half name, no markup as content


def test_text_that_breaks_the_format_inside_a_block_is_dropped_not_shown():
    events, parser = parse(SMOLLM2, [ANSWERS[6][1]])
    assert merged(events) == [ContentDelta("Text")]
    assert parser.malformed and parser.calls == []


def test_hermes_blocks_give_one_call_each():
    events, parser = parse(HERMES, [ANSWERS[7][1]])
    assert parser.content == "Let me look."
    assert [(c.id, c.name, c.arguments) for c in parser.calls] == [
        ("call_0", "get_weather", '{"city": "Bern", "unit": "celsius"}'),
        ("call_1", "now", "{}"),
    ]


def test_ids_are_openai_style_and_distinct():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("call_") and len(i) == 29 and i[5:].isalnum() for i in ids)


@pytest.mark.parametrize("fmt, text", ANSWERS)
def test_one_character_at_a_time_gives_the_same_events(fmt, text):
    assert merged(parse(fmt, list(text))[0]) == merged(parse(fmt, [text])[0])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ANSWERS), st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_any_split_of_an_answer_gives_the_same_events(answer, cuts):
    fmt, text = answer
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    whole_events, whole = parse(fmt, [text])
    split_events, split = parse(fmt, pieces)
    assert merged(split_events) == merged(whole_events)
    assert (split.content, split.truncated, split.malformed) == (whole.content, whole.truncated, whole.malformed)
    assert [(c.name, c.arguments) for c in split.calls] == [(c.name, c.arguments) for c in whole.calls]
    assert not any(isinstance(e, ContentDelta) and "<tool_call>" in e.text for e in split_events)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
calls = st.lists(
    st.tuples(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
    min_size=1,
    max_size=3,
)
free_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30).filter(lambda t: "<tool_call>" not in t)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([SMOLLM2, HERMES]), free_text, calls, st.sampled_from([",", ", ", ",\n", ",\n  "]), st.data())
def test_generated_answers_give_back_their_calls_under_any_split(fmt, text, wanted, separator, data):
    written = [(name, json.dumps(arguments, indent=data.draw(st.sampled_from([None, 2])))) for name, arguments in wanted]
    if fmt.array:  # the model's own spacing between array items
        objects = [f'{{"name": {json.dumps(name)}, "arguments": {arguments}}}' for name, arguments in written]
        block = f"{fmt.open}[{separator.join(objects)}]{fmt.close}"
    else:
        block = fmt.render_calls(written)
    answer = text + block
    points = sorted(set(data.draw(st.lists(st.integers(min_value=0, max_value=len(answer)), max_size=20))))
    events, parser = parse(fmt, [answer[a:b] for a, b in zip([0, *points], [*points, len(answer)])])
    assert [(c.name, c.arguments) for c in parser.calls] == written
    assert parser.content == text.rstrip(" \t\n\r")
    assert not parser.truncated and not parser.malformed
    assert merged(events) == merged(parse(fmt, [answer])[0])
