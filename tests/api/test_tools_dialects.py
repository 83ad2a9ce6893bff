"""Tools and output formats in the other dialects, live: Infomaniak's successor route takes them
(and TGI's spellings: `{"type": "json", "value": ...}`, `tool_prompt`); its legacy route and
Scale EGP v4 keep refusing them, each in its own envelope, naming the field."""

from __future__ import annotations

import json

import jsonschema
import pytest

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SUCCESSOR = "/1/ai/10775/openai/chat/completions"
CITY = {"type": "object", "properties": {"city": {"enum": ["Bern", "Paris", "Rome"]}, "population": {"type": "integer",
        "minimum": 0, "maximum": 10000000}}, "required": ["city", "population"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
Q = [{"role": "user", "content": "Name a Swiss city."}]


def test_the_successor_route_takes_tgis_json_value(http):
    r = http.post(SUCCESSOR, json={"model": "smollm2", "messages": Q, "temperature": 0, "max_tokens": 40,
                                   "response_format": {"type": "json", "value": CITY}})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), CITY)


def test_the_successor_route_takes_tools_with_tgis_tool_prompt(http):
    r = http.post(SUCCESSOR, json={"model": "smollm2", "messages": [{"role": "user", "content": "Weather in Rome?"}],
                                   "temperature": 0, "max_tokens": 40, "tools": [WEATHER], "tool_choice": "required",
                                   "tool_prompt": "Answer with a call of one of these functions."})
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["city"]


@pytest.mark.parametrize("field, value", [
    ("tools", [WEATHER]), ("tool_choice", "auto"), ("response_format", {"type": "json_object"}),
    ("structured_outputs", {"regex": "[a-z]+"}),
])
def test_the_legacy_infomaniak_route_refuses_them_in_its_envelope(http, field, value):
    r = http.post("/1/llm/10775", json={"messages": Q, field: value})
    assert r.status_code == 400
    body = r.json()
    assert body["result"] == "error" and body["error"]["code"] == "validation_error" and field in body["error"]["description"]


@pytest.mark.parametrize("field, value", [("tools", [WEATHER]), ("response_format", {"type": "json_object"})])
def test_egp_refuses_them_in_its_envelope(http, field, value):
    r = http.post("/v4/models/my-deployment/chat-completions", headers={"x-api-key": "unused"},
                  json={"chat_history": [], "prompt": "Hi", field: value})
    assert r.status_code == 400
    body = r.json()
    assert body["param"] == field and field in body["detail"]


def test_tokenize_counts_a_tool_history_as_chat_renders_it(http):
    history = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    counted = http.post("/tokenize", json={"model": "smollm2", "messages": history})
    chat = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": history, "max_tokens": 1})
    assert counted.status_code == chat.status_code == 200, (counted.text, chat.text)
    assert counted.json()["count"] == chat.json()["usage"]["prompt_tokens"]
