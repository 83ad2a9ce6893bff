"""Tools and structured output against a live server and the bundled model, through the official
`openai` client: each tool_choice, streams that assemble to the whole answers byte for byte,
`max_tokens` inside a call, `.parse()` with a pydantic model, schemas that always validate, seeded
constrained requests unchanged by concurrent traffic, and bad input refused before the engine.
Every object the server sends is also checked against OpenAI's schema (openai_conformance.py).

Requests run concurrently where they can: the engine batches them, which keeps the module quick
on two cores and puts every comparison amid other traffic."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pydantic
import pytest

from .conftest import metric

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def function(name, description, properties, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


TOOLS = [
    function("get_weather", "Current weather in a city", {"city": {"type": "string", "maxLength": 20},
             "unit": {"enum": ["celsius", "fahrenheit"]}}, ["city", "unit"]),
    function("search_web", "Search the web", {"query": {"type": "string", "maxLength": 40}}, ["query"]),
    function("send_email", "Send an email", {"to": {"type": "string", "format": "email", "maxLength": 30},
             "subject": {"type": "string", "maxLength": 30}}, ["to", "subject"]),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Bern and in Paris?"}]
ACCOUNT = {  # $ref, anyOf with null, a format with a length bound, patterns, an integer range, an enum
    "$defs": {"contact": {"type": "object", "properties": {
        "email": {"type": "string", "format": "email", "maxLength": 30},
        "phone": {"anyOf": [{"type": "string", "pattern": "^\\+[0-9]{6,12}$"}, {"type": "null"}]}},
        "required": ["email", "phone"], "additionalProperties": False}},
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 24}, "code": {"type": "string", "pattern": "^[0-9]{4}$"},
                   "level": {"type": "integer", "minimum": 10, "maximum": 20}, "plan": {"enum": ["free", "pro"]},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
                   "contact": {"$ref": "#/$defs/contact"}},
    "required": ["name", "code", "level", "plan", "tags", "contact"], "additionalProperties": False,
}
ACCOUNT_FORMAT = {"type": "json_schema", "json_schema": {"name": "account", "strict": True, "schema": ACCOUNT}}


@pytest.fixture
async def aclient(server):
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c


def named(name):
    return {"type": "function", "function": {"name": name}}


def assert_valid_calls(message, allowed=tuple(SCHEMAS)):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function" and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name],
                            format_checker=jsonschema.FormatChecker())


async def test_each_tool_choice(aclient):
    ask = dict(model=MODEL, tools=TOOLS, temperature=0)
    required, email, none, auto = await asyncio.gather(
        aclient.chat.completions.create(messages=WEATHER_Q, tool_choice="required", max_tokens=100, **ask),
        aclient.chat.completions.create(messages=WEATHER_Q, tool_choice=named("send_email"), max_tokens=100, **ask),
        aclient.chat.completions.create(messages=WEATHER_Q, tool_choice="none", max_tokens=16, **ask),
        aclient.chat.completions.create(messages=[{"role": "user", "content": "Hi!"}], max_tokens=16, **ask),  # auto by default
    )
    for r in (required, email):
        (choice,) = r.choices
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    assert_valid_calls(required.choices[0].message)
    assert_valid_calls(email.choices[0].message, allowed=("send_email",))
    assert len(email.choices[0].message.tool_calls) == 1  # a named function is called once
    for r in (none, auto):  # the small model answers "Hi!" in words: auto stays text
        (choice,) = r.choices
        assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
        assert choice.message.content and "<tool_call>" not in choice.message.content


async def whole_and_streamed(aclient, **kw):
    """The whole answer, and the streamed one assembled as clients do (by choice and call index)."""

    async def streamed():
        choices: dict[int, dict] = {}
        usage = None
        async for chunk in await aclient.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            for c in chunk.choices:
                choice = choices.setdefault(c.index, {"content": None, "calls": {}, "finish_reason": None})
                if c.delta.content is not None:
                    choice["content"] = (choice["content"] or "") + c.delta.content
                for d in c.delta.tool_calls or []:
                    if d.index not in choice["calls"]:  # a call's first delta: all of it but its arguments
                        assert d.id.startswith("call_") and d.type == "function" and d.function.arguments == ""
                        assert d.index == len(choice["calls"])
                        choice["calls"][d.index] = [d.function.name, ""]
                    else:  # then only argument fragments
                        assert d.id is None and d.type is None and d.function.name is None
                        choice["calls"][d.index][1] += d.function.arguments
                choice["finish_reason"] = c.finish_reason or choice["finish_reason"]
        return [choices[i] for i in sorted(choices)], usage

    return await asyncio.gather(aclient.chat.completions.create(**kw), streamed())


def same_answer(whole, streamed):
    """Equal up to call ids: content, names, byte-equal arguments, finish reason and usage."""
    choices, usage = streamed
    for w, s in zip(whole.choices, choices, strict=True):
        assert s["content"] == w.message.content and s["finish_reason"] == w.finish_reason
        calls = [[c.function.name, c.function.arguments] for c in w.message.tool_calls or []]
        assert list(s["calls"].values()) == calls
    assert (usage.prompt_tokens, usage.completion_tokens) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)


async def test_streams_assemble_to_the_whole_answers_for_seeds_and_tool_choices(aclient):
    cases = [(choice, seed, True) for seed in (1, 2) for choice in ("required", named("get_weather"), "auto")]
    cases.append(("required", 3, False))
    pairs = await asyncio.gather(*(
        whole_and_streamed(aclient, model=MODEL, messages=WEATHER_Q, tools=TOOLS, tool_choice=choice, seed=seed,
                           parallel_tool_calls=parallel, temperature=1, max_tokens=48)
        for choice, seed, parallel in cases))
    for (choice, _, parallel), (whole, streamed) in zip(cases, pairs):
        same_answer(whole, streamed)
        message = whole.choices[0].message
        if message.tool_calls and whole.choices[0].finish_reason == "tool_calls":
            assert_valid_calls(message)
        if choice != "auto":
            assert message.tool_calls and message.content is None
        if not parallel:
            assert len(message.tool_calls) == 1
        assert "<tool_call>" not in (message.content or "")


async def test_max_tokens_inside_a_call_is_length_in_both_modes(aclient):
    whole, streamed = await whole_and_streamed(aclient, model=MODEL, messages=WEATHER_Q, tools=TOOLS,
                                               tool_choice=named("get_weather"), temperature=0, max_tokens=22)
    same_answer(whole, streamed)
    (choice,) = whole.choices
    assert choice.finish_reason == "length" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments.startswith("{")


async def test_schemas_always_validate_greedy_and_across_seeds_streamed_or_not(aclient):
    seeds = [None, 1, 2]  # None: temperature 0
    pairs = await asyncio.gather(*(
        whole_and_streamed(aclient, model=MODEL, messages=[{"role": "user", "content": "Write Alice's account as JSON."}],
                           response_format=ACCOUNT_FORMAT, seed=seed, temperature=0 if seed is None else 1, max_tokens=160)
        for seed in seeds))
    for whole, streamed in pairs:
        same_answer(whole, streamed)
        assert whole.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(whole.choices[0].message.content), ACCOUNT, format_checker=jsonschema.FormatChecker())


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=120)


async def test_parse_with_a_pydantic_model(aclient):
    r = await aclient.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}],
                                             response_format=Person, temperature=0, max_tokens=48)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.name


async def test_a_seeded_constrained_request_is_the_same_alone_and_amid_traffic(aclient):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Write Bob's account as JSON."}],
               response_format=ACCOUNT_FORMAT, seed=11, temperature=1, max_tokens=48)
    alone = await aclient.chat.completions.create(**ask)
    traffic = [
        aclient.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=TOOLS, tool_choice="required", seed=5,
                                        temperature=1, max_tokens=40),
        aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=32),
        aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "List three colours as JSON."}],
                                        response_format={"type": "json_object"}, max_tokens=30),
    ]
    amid, *_ = await asyncio.gather(aclient.chat.completions.create(**ask), *traffic)
    assert amid.choices[0].message.content == alone.choices[0].message.content


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}},
     "response_format", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "iri"}}}},
     "response_format", "iri"),
    ({"structured_outputs": {"regex": "(?=x)y"}}, "structured_outputs.regex", "look"),
    ({"tools": TOOLS, "tool_choice": named("delete_all")}, "tool_choice", "delete_all"),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type", "function"),
    ({"tools": [function(f"f{i}", "", {}, []) for i in range(129)]}, "tools", "128"),
    ({"tools": [function("big", "", {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(700)}, [])]},
     "tools[0].function.parameters", "65536 bytes"),
    ({"messages": [*WEATHER_Q, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Bern}"}}]}]},
     "messages[1].tool_calls[0].function.arguments", "JSON"),
    ({"messages": [*WEATHER_Q, {"role": "tool", "tool_call_id": "c9", "content": "sunny"}]}, "messages[1].tool_call_id", "call"),
])
def test_bad_input_is_a_400_naming_the_field_with_nothing_queued_or_left(http, body, param, words):
    before = http.get("/metrics").text
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": WEATHER_Q, "max_tokens": 8, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    after = http.get("/metrics").text
    for name in ("chatforge_running_requests", "chatforge_waiting_requests", "chatforge_kv_cache_usage_ratio"):
        assert metric(after, name) == metric(before, name)


def test_constrained_requests_are_counted(http):
    def count(text):
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('chatforge_constrained_requests_total{') and 'kind="choice"' in line)

    before = count(http.get("/metrics").text)
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": WEATHER_Q, "max_tokens": 4,
                                                 "structured_outputs": {"choice": ["sunny", "rainy"]}})
    assert r.json()["choices"][0]["message"]["content"] in ("sunny", "rainy")
    assert count(http.get("/metrics").text) == before + 1


def test_grammar_errors_are_counted_per_model(catalog):
    from chatforge.api.metrics import Metrics
    from chatforge.service.errors import ConstraintFailedError, InvalidRequestError

    metrics = Metrics(catalog)
    metrics.observe_constrained(MODEL, "json_schema", ConstraintFailedError("fuel"))
    metrics.observe_constrained(MODEL, "tools", InvalidRequestError("not a grammar error"))
    metrics.observe_constrained(MODEL, None, None)
    text = metrics.render().decode()
    assert f'chatforge_grammar_errors_total{{model="{MODEL}"}} 1.0' in text
    assert f'chatforge_constrained_requests_total{{kind="json_schema",model="{MODEL}"}} 1.0' in text
    assert f'chatforge_constrained_requests_total{{kind="tools",model="{MODEL}"}} 1.0' in text
