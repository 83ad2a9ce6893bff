"""Tool-call grammars (text/tool_format.py), compiled by llguidance on the bundled vocabulary and
driven with scripted answers: what each tool_choice lets through, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from chatforge.text.structured import (
    Choice, JsonObject, JsonSchema, LarkGrammar, Regex, StructuredOutput, StructuredOutputError, lark_expression,
)
from chatforge.text.tool_format import (
    HERMES,
    MAX_TOOLS,
    SMOLLM2,
    FunctionTool,
    ToolChoice,
    ToolSpecError,
    check_tools,
    no_call_grammar,
    tool_call_grammar,
)

WEATHER = FunctionTool(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]},
)
SEARCH = FunctionTool("search_web", {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
NOW = FunctionTool("now")
TOOLS = [WEATHER, SEARCH, NOW]

W = '{"name": "get_weather", "arguments": {"city": "Bern"}}'
S = '{"name": "search_web", "arguments": {"q": "news"}}'
N = '{"name": "now", "arguments": {}}'
AUTO, REQUIRED, SEARCH_ONLY = ToolChoice("auto"), ToolChoice("required"), ToolChoice("function", "search_web")


@pytest.fixture(scope="module")
def structured(smol) -> StructuredOutput:
    return StructuredOutput(smol, mask_threads=1)


def verdict(smol, structured, fmt, choice, parallel, text) -> str:
    """"complete", "open" (a valid prefix that may go on) or "refused"."""
    matcher = structured.compile(tool_call_grammar(fmt, TOOLS, choice, parallel)).matcher()
    if not all(matcher.accept(t) for t in smol.encode(text)):
        return "refused"
    return "complete" if matcher.is_finished() or matcher.accept(2) else "open"


@pytest.mark.parametrize(
    "fmt, choice, parallel, text, expected",
    [
        (SMOLLM2, REQUIRED, True, f"<tool_call>[{W}]</tool_call>", "complete"),
        (SMOLLM2, REQUIRED, True, f"<tool_call>[\n{W},\n{S}, {N}]</tool_call>", "complete"),
        (SMOLLM2, REQUIRED, False, f"<tool_call>[{W}, {S}]</tool_call>", "refused"),
        (SMOLLM2, REQUIRED, True, "It is sunny.", "refused"),
        (SMOLLM2, REQUIRED, True, "<tool_call>[]</tool_call>", "refused"),
        (SMOLLM2, REQUIRED, True, '<tool_call>[{"name": "delete_everything", "arguments": {}}]</tool_call>', "refused"),
        (SMOLLM2, REQUIRED, True, '<tool_call>[{"name": "now", "arguments": {"x": 1}}]</tool_call>', "refused"),
        (SMOLLM2, REQUIRED, True, '<tool_call>[{"name": "get_weather", "arguments": {"city": "B", "unit": "K"}}]</tool_call>', "refused"),
        (SMOLLM2, REQUIRED, True, f"<tool_call>[{W}]</tool_call> Done.", "refused"),
        (SMOLLM2, SEARCH_ONLY, True, f"<tool_call>[{S}]</tool_call>", "complete"),
        (SMOLLM2, SEARCH_ONLY, True, f"<tool_call>[{W}]</tool_call>", "refused"),
        (SMOLLM2, SEARCH_ONLY, True, f"<tool_call>[{S}, {S}]</tool_call>", "refused"),
        (SMOLLM2, AUTO, True, "Hello! Nothing to call.", "complete"),
        (SMOLLM2, AUTO, True, f"Sure.<tool_call>[{W}, {S}]</tool_call>", "complete"),
        (SMOLLM2, AUTO, True, "Sure.<tool_call>let me think", "refused"),
        (SMOLLM2, AUTO, True, f"Sure.<tool_call>[{W}]</tool_call> and more", "refused"),
        (HERMES, REQUIRED, True, f"<tool_call>\n{W}\n</tool_call>", "complete"),
        (HERMES, REQUIRED, True, f"<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{N}\n</tool_call>", "complete"),
        (HERMES, REQUIRED, False, f"<tool_call>\n{W}\n</tool_call>\n<tool_call>", "refused"),
        (HERMES, AUTO, True, f"Let me check.\n<tool_call>\n{S}\n</tool_call>", "complete"),
        (HERMES, AUTO, True, "Just text.", "complete"),
    ],
)
def test_each_tool_choice_lets_through_exactly_its_answers(smol, structured, fmt, choice, parallel, text, expected):
    assert verdict(smol, structured, fmt, choice, parallel, text) == expected


def test_after_the_trigger_in_auto_mode_only_the_call_body_is_allowed(smol, structured):
    grammar = structured.compile(tool_call_grammar(SMOLLM2, TOOLS, AUTO))
    matcher = grammar.matcher()
    assert all(matcher.accept(t) for t in smol.encode("Sure.<tool_call>"))
    bitmask = np.zeros((1, grammar.vocab_size // 32), dtype=np.int32)
    matcher.mask_filler.fill([(matcher, 0)], bitmask)
    allowed = np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), bitorder="little")).tolist()
    assert [smol.decode([t]) for t in allowed] == ["["]


def test_none_means_no_grammar_and_past_calls_render_in_the_format():
    assert tool_call_grammar(SMOLLM2, TOOLS, ToolChoice("none")) is None
    calls = [("get_weather", ' {"city": "Bern"} '), ("now", "{}")]
    assert SMOLLM2.render_calls(calls) == (
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Bern"}}, {"name": "now", "arguments": {}}]</tool_call>'
    )
    assert HERMES.render_calls(calls) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    )


@pytest.mark.parametrize(
    "tools, choice, param",
    [
        ([FunctionTool("has space")], AUTO, "tools[0].function.name"),
        ([NOW, FunctionTool("now")], AUTO, "tools[1].function.name"),
        ([FunctionTool("f", {"type": "array"})], AUTO, "tools[0].function.parameters"),
        ([FunctionTool(f"f{i}") for i in range(MAX_TOOLS + 1)], AUTO, "tools"),
        ([], REQUIRED, "tool_choice"),
        ([WEATHER], ToolChoice("function", "search_web"), "tool_choice"),
    ],
)
def test_tools_that_cannot_be_served_are_errors_naming_the_field(tools, choice, param):
    with pytest.raises(ToolSpecError) as info:
        check_tools(tools, choice)
    assert info.value.param == param


def test_a_strict_function_with_an_unenforceable_schema_is_refused_and_a_lax_one_compiles(structured):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(StructuredOutputError) as info:
        structured.compile(tool_call_grammar(SMOLLM2, [FunctionTool("tag", schema, strict=True)], REQUIRED))
    assert "uniqueItems" in info.value.message
    lax = structured.compile(tool_call_grammar(SMOLLM2, [FunctionTool("tag", schema)], REQUIRED))
    assert any("uniqueItems" in w for w in lax.warnings)


def test_an_oversized_function_schema_is_an_error_naming_the_function():
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(700)}}
    with pytest.raises(ToolSpecError) as info:
        tool_call_grammar(SMOLLM2, [NOW, FunctionTool("big", huge)], REQUIRED)
    assert info.value.param == "tools[1].function.parameters" and "65536 bytes" in info.value.message


def test_argument_objects_are_closed_unless_their_schema_opens_them(smol, structured):
    nested = {"type": "object", "properties": {"where": {"type": "object", "properties": {"city": {"type": "string"}}},
                                               "properties": {"type": "object", "additionalProperties": True}}}
    grammar = structured.compile(tool_call_grammar(SMOLLM2, [FunctionTool("f", nested)], REQUIRED))

    def accepts(arguments: str) -> bool:
        matcher = grammar.matcher()
        text = f'<tool_call>[{{"name": "f", "arguments": {arguments}}}]</tool_call>'
        return all(matcher.accept(t) for t in smol.encode(text)) and matcher.is_finished()

    assert accepts('{"where": {"city": "Bern"}, "properties": {"any": 1}}')
    assert not accepts('{"where": {"city": "Bern", "maxLength": 20}}')  # nested: closed
    assert not accepts('{"where": {}, "extra": 1}')  # top level: closed
    assert nested["properties"]["where"] == {"type": "object", "properties": {"city": {"type": "string"}}}  # caller's dict untouched


def test_none_with_calls_in_the_history_forbids_only_the_opening_marker(smol, structured):
    grammar = structured.compile(no_call_grammar(SMOLLM2))

    def takes(text):
        matcher = grammar.matcher()
        return all(matcher.accept(t) for t in smol.encode(text)) and matcher.accept(2)

    assert takes("It is sunny in Bern, <tool> and <b>tool_call</b> are just words.\n")
    assert not takes("Sure. <tool_call>[]</tool_call>")
    assert not takes("It ends </tool_call>")


@pytest.mark.parametrize(
    "content, text, expected",
    [
        (JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}), '{"a": 5}', "complete"),
        (JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}), '{"a": "x"}', "refused"),
        (JsonObject(), "Just text.", "refused"),
        (Regex(r"[0-9]{2}/[0-9]{2}"), "12/31", "complete"),
        (Choice(("yes", "no")), "no", "complete"),
        (Choice(("yes", "no")), "maybe", "refused"),
        (Choice(("yes", "no")), f"<tool_call>[{W}]</tool_call>", "complete"),
        (JsonObject(), f"{{}}<tool_call>[{W}]</tool_call>", "refused"),  # calls only from the first token
    ],
)
def test_auto_with_an_output_format_is_that_content_or_calls(smol, structured, content, text, expected):
    source = tool_call_grammar(SMOLLM2, TOOLS, AUTO, content=lark_expression(content))
    matcher = structured.compile(source).matcher()
    ok = all(matcher.accept(t) for t in smol.encode(text))
    assert ("complete" if ok and (matcher.is_finished() or matcher.accept(2)) else "refused") == expected


def test_a_lark_grammar_cannot_be_an_alternative_to_calls():
    with pytest.raises(StructuredOutputError, match="cannot be combined with tools"):
        lark_expression(LarkGrammar('start: "a"'))


@pytest.mark.parametrize("choice", [AUTO, ToolChoice("none")])
def test_free_text_never_echoes_the_tool_result_wrapper(smol, structured, choice):
    source = tool_call_grammar(SMOLLM2, TOOLS, choice) if choice.mode == "auto" else no_call_grammar(SMOLLM2)
    grammar = structured.compile(source)

    def takes(text):
        matcher = grammar.matcher()
        return all(matcher.accept(t) for t in smol.encode(text)) and (matcher.is_finished() or matcher.accept(2))

    assert takes("It is sunny in Bern.")
    assert not takes("<tool_response>\nIt is sunny in Bern.\n</tool_response>")
    assert not takes("<tool_response]</tool_response>")  # the near miss the bundled model wrote
    if choice.mode == "auto":
        assert not takes(f"<tool_response>sunny</tool_response><tool_call>[{W}]</tool_call>")
        assert takes(f"Checking.<tool_call>[{W}]</tool_call>")
