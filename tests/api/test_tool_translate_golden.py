"""Tools, tool calls and output formats in the OpenAI dialect, pinned by golden JSON
(tests/api/golden/tools/): wire bodies (OpenAI's, vLLM's structured_outputs, TGI's spellings on
the Infomaniak successor route) become these internal requests; answers with calls become
these responses and chunks, streamed the way OpenAI streams them. No server, no model.

To rewrite the files after an intended change:
CHATFORGE_UPDATE_GOLDEN=1 pytest tests/api/test_tool_translate_golden.py, then read the diff."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatforge.api.openai import translate as openai
from chatforge.api.openai.schemas import ChatCompletionRequest, ProductChatCompletionRequest
from chatforge.service.errors import InvalidRequestError
from chatforge.service.protocol import (
    ChatEvent, ChatResult, Choice, ChoiceDelta, FinishReason, ToolCall, ToolCallArguments, ToolCallStart, Usage,
)

from .openai_conformance import problems
from .test_translate_golden import GOLDEN, golden, prep

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
HISTORY = [
    {"role": "user", "content": "Weather in Bern?"},
    {"role": "assistant", "content": None, "refusal": None, "annotations": [],
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Bern\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21 degrees"}]},
]
USAGE = Usage(prompt_tokens=3, completion_tokens=9, estimated_cost=0.00001)
RESULT = ChatResult("rid", "HuggingFaceTB/SmolLM2-135M-Instruct", 1700000000, [
    Choice(0, "", FinishReason.TOOL_CALLS, tool_calls=[ToolCall("call_a", "get_weather", '{"city": "Bern"}'),
                                                      ToolCall("call_b", "get_weather", '{"city": "Paris"}')]),
    Choice(1, "Let me check.", FinishReason.TOOL_CALLS, tool_calls=[ToolCall("call_c", "get_weather", '{"city": "Bern"}')]),
], USAGE)
EVENTS = [
    ChatEvent([ChoiceDelta(0, "", tool_calls=[ToolCallStart(0, "call_a", "get_weather")]),
               ChoiceDelta(1, "Let me check.")], Usage(3, 2, 0)),
    ChatEvent([ChoiceDelta(0, "", tool_calls=[ToolCallArguments(0, '{"city":'), ToolCallArguments(0, ' "Bern"}'),
                                              ToolCallStart(1, "call_b", "get_weather"), ToolCallArguments(1, '{"city": "Paris"}')],
                           finish_reason=FinishReason.TOOL_CALLS),
               ChoiceDelta(1, "", tool_calls=[ToolCallStart(0, "call_c", "get_weather"), ToolCallArguments(0, '{"city": "Bern"}')],
                           finish_reason=FinishReason.TOOL_CALLS)], USAGE, done=True),
]


def test_tools_choice_history_and_response_format_become_the_internal_request():
    body = ChatCompletionRequest.model_validate({
        "model": "smollm2", "messages": HISTORY, "tools": [WEATHER], "parallel_tool_calls": False,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {"type": "object"}}},
    })
    golden("tools/openai_tool_request", openai.to_internal(body, "chatcmpl-1"))


@pytest.mark.parametrize("structured, name", [
    ({"json": '{"type": "integer"}'}, "json"), ({"regex": "[0-9]+"}, "regex"), ({"choice": ["yes", "no"]}, "choice"),
    ({"grammar": 'start: "a"+'}, "grammar"),
])
def test_structured_outputs_become_output_formats(structured, name):
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": HISTORY[:1], "structured_outputs": structured})
    golden(f"tools/structured_outputs_{name}", openai.to_internal(body, "r").output_format)


@pytest.mark.parametrize("response_format, name", [
    ({"type": "json", "value": {"type": "integer"}}, "json"), ({"type": "json_object", "value": {"type": "integer"}}, "json_object_value"),
    ({"type": "json_object"}, "json_object"), ({"type": "regex", "value": "[0-9]+"}, "regex"),
])
def test_the_successor_route_takes_tgis_response_formats_and_tool_prompt(response_format, name):
    body = ProductChatCompletionRequest.model_validate({"model": "m", "messages": HISTORY[:1], "response_format": response_format,
                                                        "tools": [WEATHER], "tool_prompt": "Call a tool:"})
    req = openai.to_internal(body, "r")
    assert req.tool_prompt == "Call a tool:"
    golden(f"tools/tgi_{name}", req.output_format)
    # OpenAI's own routes keep OpenAI's spellings
    for extra in ({"tool_prompt": "x"}, {"response_format": response_format} if name != "json_object" else None):
        if extra is not None:
            with pytest.raises(ValidationError):
                ChatCompletionRequest.model_validate({"model": "m", "messages": HISTORY[:1], **extra})


@pytest.mark.parametrize("body, param", [
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": HISTORY[1]["tool_calls"]}]}, "messages[0].tool_calls"),
])
def test_contradictions_are_refused_naming_the_field(body, param):
    wire = ChatCompletionRequest.model_validate({"model": "m", "messages": HISTORY[:1], **body})
    with pytest.raises(InvalidRequestError) as info:
        openai.to_internal(wire, "r")
    assert info.value.param == param


def test_calls_are_answered_and_streamed_the_openai_way():
    codec = openai.ChatCodec(prep(n=2), "chatcmpl-1", include_usage=False, continuous_usage=False)
    response = codec.response(RESULT)
    golden("tools/openai_tool_response", response)
    chunks = [obj for e in EVENTS for obj in codec.stream_objects(e)]
    golden("tools/openai_tool_chunks", chunks)
    assert problems("CreateChatCompletionResponse", response) == []
    assert [p for c in chunks for p in problems("CreateChatCompletionStreamResponse", c)] == []
    first = chunks[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}


def test_no_tool_golden_file_is_stale():
    names = {p.stem for p in (GOLDEN / "tools").glob("*.json")}
    assert names == {
        "openai_tool_request", "openai_tool_response", "openai_tool_chunks",
        *(f"structured_outputs_{n}" for n in ("json", "regex", "choice", "grammar")),
        *(f"tgi_{n}" for n in ("json", "json_object_value", "json_object", "regex")),
    }


def test_every_finish_reason_the_service_gives_has_each_dialects_spelling():
    from chatforge.api.egp import translate as egp
    from chatforge.api.infomaniak import translate as infomaniak

    served = set(FinishReason) - {FinishReason.GRAMMAR_ERROR}  # the service raises ConstraintFailedError instead
    assert set(openai.FINISH) == served
    assert set(egp.FINISH) == set(infomaniak.FINISH) == served - {FinishReason.TOOL_CALLS}  # they refuse tools
