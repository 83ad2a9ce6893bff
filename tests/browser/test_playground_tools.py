"""Tools and JSON-schema output in `/playground` (chromium, a live server in open mode, the bundled
model): a function defined in the panel (its parameters' JSON checked as typed), tool_choice
naming it, the streamed call shown with arguments that parse and follow the schema, answered with
a `tool` message and the conversation continued; a json_schema answer shown pretty-printed that
validates, on a narrow window; the code panel's request is the one sent, and its Python runs."""

from __future__ import annotations

import json

import jsonschema
from playwright.sync_api import expect

from .pages import MODEL, code, curl_body, greedy, last_answer, open_playground, send
from .test_playground import run_snippet

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
           "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": False}
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20}, "population": {"type": "integer", "minimum": 0, "maximum": 50000000}},
        "required": ["name", "country", "population"], "additionalProperties": False}


def posts(page) -> list:
    sent = []
    page.on("request", lambda r: sent.append(r) if r.method == "POST" else None)
    return sent


def test_a_named_tool_call_is_shown_answered_and_continued(open_server, page_at):
    page = page_at(open_server)
    open_playground(page, "openai")
    greedy(page, "openai", 60)
    tools = page.locator("#openai-tools")
    tools.get_by_role("button", name="Add a function").focus()
    page.keyboard.press("Enter")  # the keyboard adds a function and lands in its name
    fn = tools.locator("fieldset.tool").first
    expect(fn.locator('[data-part="name"]')).to_be_focused()
    page.keyboard.type("get_weather")
    fn.locator('[data-part="description"]').fill("Current weather in a city")
    params = fn.locator('[data-part="parameters"]')
    params.fill('{"type": "object", "properties": ')  # unfinished JSON: named, and nothing can be sent
    expect(page.locator("#openai-tools-note")).to_contain_text("get_weather's parameters is not valid JSON")
    expect(params).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#code-note")).to_contain_text("Not ready: tools:")
    params.fill(json.dumps(WEATHER))
    expect(params).to_have_attribute("aria-invalid", "false")
    page.select_option("#openai-tool_choice", "function:get_weather")  # listed once the function is named
    sent = posts(page)
    send(page, "What is the weather in Paris?")

    body = sent[0].post_data_json
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}}
    assert body["tools"] == [tool]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert curl_body(code(page, "curl")) == body  # the code panel shows exactly what was sent
    assert "tool_choice={" in code(page, "openai") and '"parameters": {' in code(page, "openai")
    call = last_answer(page).locator(".tool-call")
    expect(call).to_have_count(1)
    expect(call.locator(".call-name")).to_have_text("get_weather")
    arguments = json.loads(call.locator(".call-args").inner_text())  # shown pretty-printed: still the JSON
    jsonschema.validate(arguments, WEATHER)
    call_id = call.get_attribute("data-call")
    assert call_id.startswith("call")

    # the result goes back as a `tool` message and Send continues with no new user message
    call.locator("textarea").fill('{"temperature": 21, "sky": "clear"}')
    call.get_by_role("button", name="Add the result").click()
    expect(page.locator("li.turn-tool")).to_contain_text(call_id)
    expect(page.locator("#composer")).to_be_focused()
    page.select_option("#openai-tool_choice", "none")
    send(page, "")
    messages = sent[1].post_data_json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    (sent_call,) = messages[1]["tool_calls"]
    assert (sent_call["id"], sent_call["type"], sent_call["function"]["name"]) == (call_id, "function", "get_weather")
    assert json.loads(sent_call["function"]["arguments"]) == arguments
    assert messages[2] == {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 21, "sky": "clear"}'}
    expect(last_answer(page).locator(".bubble")).not_to_be_empty()


def test_json_schema_output_is_pretty_printed_and_validates_on_a_narrow_window(open_server, page_at):
    page = page_at(open_server, width=390, height=844)
    open_playground(page, "successor")
    greedy(page, "successor", 80)
    page.select_option("#successor-response_format-type", "json_schema")
    page.fill("#successor-response_format-name", "city")
    page.fill("#successor-response_format-schema", "[1, 2]")  # JSON, but not a schema
    expect(page.locator("#successor-response_format-note")).to_contain_text("the schema must be a JSON object or boolean")
    page.fill("#successor-response_format-schema", json.dumps(CITY))
    page.check("#successor-response_format-strict")
    sent = posts(page)
    send(page, "Describe Paris as JSON.")

    body = sent[0].post_data_json
    assert body["model"] == MODEL and body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    assert curl_body(code(page, "curl")) == body
    shown = last_answer(page).locator('.bubble.json[data-json="pretty"]')
    expect(shown).to_be_visible()
    text = shown.inner_text()
    answer = json.loads(text)
    jsonschema.validate(answer, CITY)
    assert text == json.dumps(answer, indent=2, ensure_ascii=False)  # pretty-printed as JSON.stringify(_, null, 2)
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    # the panel's Python sends the same fields and gets the same greedy JSON
    printed, _ = json.JSONDecoder().raw_decode(run_snippet(code(page, "openai")))  # the JSON, then the usage line
    assert printed == answer
