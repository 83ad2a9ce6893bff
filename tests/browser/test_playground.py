"""`/playground` in chromium against a live server in open mode: a greedy answer streams in each
dialect with its timing, usage and cost; the request is exactly what the code panel shows, and the
panel's Python runs; parameters reach the request; refusals read as each dialect sent them; the
keyboard alone drives a chat and the logprobs view on a narrow window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from api.conftest import PRICE_IN, PRICE_OUT

from .pages import (
    MODEL, QUESTION, WIRE, code, curl_body, field, greedy, last_answer, open_playground, send, stat, usd,
)

SNIPPET = {"openai": "openai", "deepinfra": "openai", "successor": "openai", "legacy": "httpx", "egp": "scale-gp"}


def whole_answer(dialect: str, body: dict) -> tuple[str, int, int, str]:
    """Text, prompt and completion tokens, finish reason of a non-streamed answer."""
    if dialect == "legacy":
        data = body["data"]
        return (data["choices"][0]["message"]["content"], data["usage"]["input_tokens"], data["usage"]["output_tokens"],
                data["choices"][0]["finish_reason"])
    if dialect == "egp":
        return body["completions"][0][1][0], body["prompt_tokens"], body["response_tokens"], body["finish_reason"]
    return (body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"],
            body["choices"][0]["finish_reason"])


def run_snippet(snippet: str) -> str:
    """The panel's Python, run as a user would (no key: the server is in open mode)."""
    env = {k: v for k, v in os.environ.items() if k != "CHATFORGE_API_KEY"}
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def streamed_text(dialect: str, stdout: str) -> str:
    """The answer in what the snippet printed: raw SSE lines for httpx, the text otherwise."""
    if dialect != "legacy":
        return stdout
    data = [json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("data: {")]
    return "".join(d["choices"][0]["delta"].get("content") or "" for d in data)


@pytest.mark.parametrize("dialect", ["openai", "deepinfra", "legacy", "successor", "egp"])
def test_each_dialect_streams_an_answer_with_its_timing_usage_and_cost(open_server, page_at, dialect):
    page = page_at(open_server)
    open_playground(page, dialect)
    greedy(page, dialect, 8)
    posted = []
    page.on("request", lambda r: posted.append(r) if r.method == "POST" else None)
    send(page, QUESTION)

    (request,) = posted
    sent = request.post_data_json
    assert request.response().headers["content-type"].startswith("text/event-stream")
    answer = last_answer(page)
    text = answer.locator(".bubble").inner_text()
    assert int(answer.get_attribute("data-renders")) >= 3  # drawn as the events came, not at the end

    # The same request without the page, not streamed: the same greedy answer and counts.
    again = {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
    whole = httpx.post(open_server.url + urlsplit(request.url).path, json=again, timeout=120)
    assert whole.status_code == 200, whole.text
    want_text, prompt, completion, finish = whole_answer(WIRE[dialect], whole.json())
    assert text == want_text and text
    assert (stat(page, "prompt"), stat(page, "completion"), stat(page, "finish")) == (str(prompt), str(completion), finish)
    assert stat(page, "ttft").endswith(" ms") and float(stat(page, "speed").split()[0]) > 0
    cost = stat(page, "cost")
    assert usd(cost) == pytest.approx((prompt * PRICE_IN + completion * PRICE_OUT) / 1e6, rel=5e-3)
    assert cost.endswith("(usage row)") == (dialect in ("legacy", "egp"))  # their answers carry no cost
    assert stat(page, "request-id") == request.response().headers["x-request-id"]

    # The code panel shows exactly the request sent, and its Python sends it again.
    expect(page.locator("#code-note")).to_contain_text("The request sent at")
    assert json.loads(code(page, "body")) == sent
    assert curl_body(code(page, "curl")) == sent
    assert text in streamed_text(dialect, run_snippet(code(page, SNIPPET[dialect])))


def test_parameters_reach_the_request_exactly(open_server, page_at):
    page = page_at(open_server)
    open_playground(page, "openai")
    body = json.loads(code(page, "body"))
    assert body == {"model": MODEL, "messages": [{"role": "user", "content": ""}], "max_tokens": 64, "stream": True,
                    "stream_options": {"include_usage": True}}
    page.fill("#system", "Answer in one word.")
    field(page, "openai", "temperature").fill("0.7")
    field(page, "openai", "seed").fill("12345678901234567890")  # past 2^53: its digits must survive
    field(page, "openai", "top_k").fill("40")
    field(page, "openai", "stop").fill("Rome\nBerlin")
    field(page, "openai", "n").fill("2")
    field(page, "openai", "max_tokens").fill("6")
    page.fill("#composer", QUESTION)
    preview = code(page, "body")
    assert '"seed": 12345678901234567890' in preview
    assert json.loads(preview) == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION}],
        "temperature": 0.7, "top_k": 40, "seed": 12345678901234567890, "max_tokens": 6, "stop": ["Rome", "Berlin"],
        "stream": True, "stream_options": {"include_usage": True}, "n": 2}
    field(page, "openai", "top_k").fill("")  # an emptied field is not sent
    assert "top_k" not in json.loads(code(page, "body"))
    field(page, "openai", "top_k").fill("40")
    assert "extra_body={\"top_k\": 40}" in code(page, "openai")  # the openai client has no top_k argument

    posted = []
    page.on("request", lambda r: posted.append(r.post_data) if r.method == "POST" else None)
    send(page, QUESTION)
    assert '"seed":12345678901234567890' in posted[0]
    choices = last_answer(page).locator(".choice")
    expect(choices).to_have_count(2)
    first, second = (choices.nth(i).locator(".bubble").inner_text() for i in range(2))
    # the conversation goes on with the choice picked
    page.get_by_label("Choice 1 — continue with this one").check()
    page.fill("#composer", "And Germany?")
    messages = json.loads(code(page, "body"))["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == second and first != second  # seeded: the same two every time


def test_refusals_read_as_each_dialect_sent_them(open_server, page_at, console):
    console.allow(400)
    page = page_at(open_server)
    cases = [("openai", "temperature", "5", "invalid_request_error", "temperature: Input should be less than or equal to 2"),
             ("legacy", "top_k", "500", "validation_error", "top_k: Input should be less than or equal to 100"),
             ("egp", "top_p", "0", "invalid_request_error", "top_p: Input should be greater than 0")]
    for dialect, name, value, code_name, message in cases:
        open_playground(page, dialect)
        field(page, dialect, name).fill(value)
        expect(page.locator(f"#{WIRE[dialect]}-{name}-note")).to_contain_text("the server will refuse it")
        send(page, QUESTION, "Refused: 400.")
        error = page.locator("#error .error")
        expect(error.locator(".badge")).to_have_text("400")
        expect(error.locator(".error-head code")).to_have_text(code_name)
        expect(error.locator(".error-message")).to_contain_text(message)
        expect(page.locator("#composer")).to_have_value(QUESTION)  # nothing lost: the turn waits to be sent again
        expect(page.locator("li.turn")).to_have_count(0)

    open_playground(page, "openai")  # a value that is not JSON never leaves the page
    field(page, "openai", "logit_bias").fill("{1: -5")
    page.fill("#composer", QUESTION)
    page.click("#send")
    expect(page.locator("#error .error-message")).to_have_text("Fix first: logit_bias: not valid JSON.")


def tab_to(page, element_id: str, key: str = "Tab", limit: int = 80) -> None:
    """Press Tab (or Shift+Tab) until the element `element_id` has the focus."""
    for _ in range(limit):
        page.keyboard.press(key)
        if page.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
    raise AssertionError(f"{key} never reached #{element_id}")


def test_the_keyboard_alone_on_a_narrow_window_with_logprobs(open_server, page_at):
    page = page_at(open_server, width=390, height=844)
    open_playground(page, "openai")
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")

    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the message box")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#composer")).to_be_focused()
    page.keyboard.type(QUESTION)
    tab_to(page, "openai-logprobs", "Shift+Tab")
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.type("3")  # top_logprobs
    tab_to(page, "openai-max_tokens", "Shift+Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("6")
    tab_to(page, "openai-temperature", "Shift+Tab")
    page.keyboard.type("0")
    tab_to(page, "composer")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_have_text("Done.")
    body = json.loads(code(page, "body"))
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"], body["temperature"]) == (True, 3, 6, 0)

    tab_to(page, "composer")
    page.keyboard.press("Shift+Tab")
    toggle = page.get_by_role("button", name="Show token probabilities")
    expect(toggle).to_be_focused()
    page.keyboard.press("Enter")
    tokens = page.locator(".tok")
    expect(tokens).to_have_count(6)
    page.keyboard.press("Shift+Tab")
    expect(tokens.first).to_be_focused()
    tip = page.locator(".token-tip")
    expect(tip).to_be_visible()
    expect(tip.locator("tbody tr")).to_have_count(3)
    expect(tip.locator("tr.chosen")).to_have_count(1)  # greedy: the token taken is among the likeliest
    page.keyboard.press("ArrowRight")
    expect(tokens.nth(1)).to_be_focused()
    expect(tip).to_contain_text(tokens.nth(1).inner_text())
    page.keyboard.press("Escape")
    expect(tip).to_be_hidden()
    tokens.nth(2).hover()
    expect(tip).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_infomaniak_presets_fill_in_and_explicit_values_override(open_server, page_at):
    page = page_at(open_server)
    open_playground(page, "legacy")
    presets = httpx.get(open_server.url + "/1/llm/profiles").json()["data"]
    for profile in ("standard", "creative", "strict"):
        if profile != "standard":  # a request without one uses standard
            field(page, "legacy", "profile_type").select_option(profile)
        for name in ("temperature", "top_p", "top_k", "repetition_penalty"):
            value = presets[profile][name]
            shown = "off" if value is None else f"{value:g}"
            expect(field(page, "legacy", name)).to_have_attribute("placeholder", f"{shown} ({profile})")
    field(page, "legacy", "temperature").fill("0.5")
    page.fill("#composer", QUESTION)
    body = json.loads(code(page, "body"))
    assert (body["profile_type"], body["temperature"]) == ("strict", 0.5) and "top_k" not in body
    assert body["messages"] == [{"role": "user", "content": QUESTION}]
