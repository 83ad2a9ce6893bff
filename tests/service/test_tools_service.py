"""Tools and output formats in the service, against a scripted engine: what the prompt and the
grammar become, how scripted answers come back (content, calls, finish reasons: the stream and
the whole answer alike), and every bad input refused by `prepare` with the field it names."""

from __future__ import annotations

import dataclasses

import pytest

from chatforge.engine.outputs import FinishReason
from chatforge.service.chat import ChatService
from chatforge.service.catalog import ModelCatalog
from chatforge.service.errors import ConstraintFailedError, EngineUnavailableError, InvalidRequestError
from chatforge.service.protocol import (
    ChatMessage, ChatRequest, FunctionTool, OutputFormat, SamplingParams, ToolCall, ToolCallStart, ToolChoice,
)
from chatforge.text.structured import JsonObject, JsonSchema, LarkGrammar, Regex, StructuredOutput

from .conftest import output, step
from .test_chat_service import events_of, text_answer

WEATHER = FunctionTool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
NOTE = FunctionTool("note", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Bern"}}]</tool_call>'


def ask(*messages: ChatMessage | str, **fields) -> ChatRequest:
    msgs = [ChatMessage("user", m) if isinstance(m, str) else m for m in messages]
    return ChatRequest("r", "smollm2", msgs, fields.pop("params", SamplingParams(max_tokens=40)), **fields)


def assembled(events):
    """Each choice's content, calls and finish reason from its stream, as a client builds them."""
    content, calls, finish = {}, {}, {}
    for e in events:
        for d in e.deltas:
            content[d.index] = content.get(d.index, "") + d.text
            for c in d.tool_calls:
                if isinstance(c, ToolCallStart):
                    calls.setdefault(d.index, []).append(ToolCall(c.id, c.name))
                else:
                    calls[d.index][c.index].arguments += c.text
            finish[d.index] = d.finish_reason or finish.get(d.index)
    return content, calls, finish


async def test_auto_answers_text_then_a_call_and_finishes_with_tool_calls(make_catalog, tokenizer):
    catalog, engine = make_catalog(text_answer(tokenizer, f"Sure. {CALL}"))
    service = ChatService(catalog)
    prep = service.prepare(ask("Weather in Bern?", tools=[WEATHER, NOTE]))
    assert prep.constraint_kind == "tools" and prep.tool_format.name == "smollm2"
    assert "<tools>" in prep.prompts[0].text and '"name": "get_weather"' in prep.prompts[0].text
    events = await events_of(service, prep)
    result = await service.complete(service.prepare(ask("Weather in Bern?", tools=[WEATHER, NOTE])))
    (choice,) = result.choices
    assert choice.text == "Sure." and choice.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.name, c.arguments) for c in choice.tool_calls] == [("get_weather", '{"city": "Bern"}')]
    assert choice.tool_calls[0].id.startswith("call_")
    content, calls, finish = assembled(events)
    assert content == {0: "Sure."} and finish == {0: FinishReason.TOOL_CALLS}
    assert [(c.name, c.arguments) for c in calls[0]] == [("get_weather", '{"city": "Bern"}')]
    assert all(s.params.grammar is not None for s in engine.submitted)


async def test_a_stop_string_does_not_cut_a_call(make_catalog, tokenizer):
    note = '<tool_call>[{"name": "note", "arguments": {"text": "a\\nb}"}}]</tool_call>'
    catalog, engine = make_catalog(text_answer(tokenizer, note))
    service = ChatService(catalog)
    params = SamplingParams(max_tokens=40, stop=["\n", "}"])
    result = await service.complete(service.prepare(ask("Note it.", tools=[NOTE], tool_choice=ToolChoice("required"), params=params)))
    (choice,) = result.choices
    assert choice.finish_reason is FinishReason.TOOL_CALLS and engine.finished == []
    assert [(c.name, c.arguments) for c in choice.tool_calls] == [("note", '{"text": "a\\nb}"}')]


async def test_max_tokens_inside_a_call_is_length_with_the_call_as_far_as_it_got(make_catalog, tokenizer):
    cut = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Be'
    catalog, _ = make_catalog(text_answer(tokenizer, cut, finish=FinishReason.LENGTH))
    service = ChatService(catalog)
    request = ask("Weather?", tools=[WEATHER], tool_choice=ToolChoice("required"))
    events = await events_of(service, service.prepare(request))
    result = await service.complete(service.prepare(request))
    (choice,) = result.choices
    assert choice.finish_reason is FinishReason.LENGTH and choice.text == ""
    assert [(c.name, c.arguments) for c in choice.tool_calls] == [("get_weather", '{"city": "Be')]
    content, calls, finish = assembled(events)
    assert finish == {0: FinishReason.LENGTH} and [(c.name, c.arguments) for c in calls[0]] == [("get_weather", '{"city": "Be')]


async def test_a_grammar_that_fails_is_a_typed_error_with_its_message(make_catalog, tokenizer):
    def script(prompt_ids, params):
        failed = step(0, [], 1, FinishReason.GRAMMAR_ERROR)
        failed.error = "parser step fuel exhausted"
        return [output("r", failed, prompt_tokens=len(prompt_ids), finished=True)]

    catalog, _ = make_catalog(script)
    service = ChatService(catalog)
    output_format = OutputFormat(JsonObject(), "response_format", "json_object")
    with pytest.raises(ConstraintFailedError, match="fuel exhausted") as info:
        await service.complete(service.prepare(ask("JSON please", output_format=output_format)))
    assert info.value.status == 500 and info.value.code == "grammar_error"


def test_a_history_of_calls_renders_in_the_models_format_and_no_new_call_can_start(make_catalog, tokenizer):
    catalog, _ = make_catalog(text_answer(tokenizer, "ok"))
    service = ChatService(catalog)
    history = [
        "Weather in Bern?",
        ChatMessage("assistant", None, tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Bern"}')]),
        ChatMessage("tool", "21 degrees", tool_call_id="call_1"),
    ]
    prep = service.prepare(ask(*history))
    text = prep.prompts[0].text
    assert '<tool_call>[{"name": "get_weather", "arguments": {"city": "Bern"}}]</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n21 degrees\n</tool_response>" in text
    assert "<tools>" not in text  # no tools offered: only the history
    assert prep.tool_format is None and prep.constraint_kind == "tools" and prep.sampling.grammar is not None


def test_output_formats_compile_for_the_model(make_catalog, tokenizer):
    catalog, _ = make_catalog(text_answer(tokenizer, "ok"))
    service = ChatService(catalog)
    for kind, constraint in [("json_object", JsonObject()), ("regex", Regex("[a-z]+")), ("grammar", LarkGrammar('start: "a"+'))]:
        prep = service.prepare(ask("Hi", output_format=OutputFormat(constraint, "response_format", kind)))
        assert prep.constraint_kind == kind and prep.sampling.grammar.vocab_size == catalog.default.structured.vocab_size
    plain = service.prepare(ask("Hi"))
    assert plain.sampling.grammar is None and plain.constraint_kind is None and plain.tool_format is None
    nothing_to_call = service.prepare(ask("Hi", tools=[], tool_choice=ToolChoice("auto")))  # as some agents send it
    assert nothing_to_call.sampling.grammar is None and nothing_to_call.prompts[0].text == plain.prompts[0].text


def test_a_model_that_cannot_enforce_grammars_answers_503_to_constrained_requests_only(make_catalog, tokenizer):
    catalog, engine = make_catalog(text_answer(tokenizer, "ok"))
    # llguidance refuses this vocabulary when the first grammar needs it (an end id past its end)
    broken = StructuredOutput(tokenizer, eos_token_ids=[10**6], mask_threads=1)
    service = ChatService(ModelCatalog([dataclasses.replace(catalog.default, structured=broken)]))
    for fields in ({"output_format": OutputFormat(JsonObject(), "response_format", "json_object")},
                   {"tools": [WEATHER], "tool_choice": ToolChoice("required")}):
        with pytest.raises(EngineUnavailableError, match="constrained decoding is unavailable") as info:
            service.prepare(ask("Hi", **fields))
        assert info.value.status == 503 and "out of range" in info.value.message
    assert service.prepare(ask("Hi")).sampling.grammar is None  # unconstrained requests are served
    assert engine.submitted == []


HUGE = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(700)}}
UNIQUE = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}


@pytest.mark.parametrize(
    "fields, messages, param, words",
    [
        ({"output_format": OutputFormat(JsonSchema(UNIQUE), "response_format", "json_schema")}, (), "response_format", "uniqueItems"),
        ({"output_format": OutputFormat(JsonSchema(HUGE), "response_format", "json_schema")}, (), "response_format", "65536 bytes"),
        ({"output_format": OutputFormat(Regex("(?=a)b"), "structured_outputs.regex", "regex")}, (), "structured_outputs.regex", "look"),
        ({"tools": [WEATHER, FunctionTool("tag", UNIQUE, strict=True)]}, (), "tools[1].function.parameters", "uniqueItems"),
        ({"tools": [WEATHER], "tool_choice": ToolChoice("required"),  # unused by this answer, refused all the same
          "output_format": OutputFormat(JsonSchema(UNIQUE), "response_format", "json_schema")}, (), "response_format", "uniqueItems"),
        ({"tools": [WEATHER, FunctionTool("big", HUGE)]}, (), "tools[1].function.parameters", "65536 bytes"),
        ({"tools": [WEATHER], "tool_choice": ToolChoice("function", "search")}, (), "tool_choice", "search"),
        ({"tool_choice": ToolChoice("required")}, (), "tool_choice", "needs tools"),
        ({"tools": [FunctionTool(f"f{i}") for i in range(129)]}, (), "tools", "128"),
        ({"tools": [WEATHER, FunctionTool("get_weather")]}, (), "tools[1].function.name", "twice"),
        ({"tools": [WEATHER], "output_format": OutputFormat(LarkGrammar('start: "a"'), "structured_outputs.grammar", "grammar")},
         (), "structured_outputs.grammar", "combined with tools"),
        ({}, (ChatMessage("assistant", None, tool_calls=[ToolCall("c1", "get_weather", "{'city': 1}")]),),
         "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
        ({}, (ChatMessage("tool", "42", tool_call_id="c9"),), "messages[1].tool_call_id", "no earlier tool call"),
    ],
)
def test_what_cannot_be_served_is_refused_naming_the_field(make_catalog, tokenizer, fields, messages, param, words):
    catalog, engine = make_catalog(text_answer(tokenizer, "ok"))
    with pytest.raises(InvalidRequestError) as info:
        ChatService(catalog).prepare(ask("Hi", *messages, **fields))
    assert info.value.param == param and words in info.value.message
    assert engine.submitted == []
