"""Request bounds on the live server (api/limits.py), in each dialect's envelope: a 12 MB body is
413 without being read whole, a 100,000-deep JSON nesting and 5,000 messages are 400, and the
server stays healthy and answers the next request."""

from __future__ import annotations

import json

import httpx
import pytest

from chatforge.api.limits import RequestBoundError, RequestLimits, json_depth_exceeds
from chatforge.service.protocol import ChatMessage, ChatRequest, ToolCall

from .platform_fixtures import chat_call

ROUTES = {"openai": None, "legacy": 1, "egp": "d-any"}


def _error(route: str, response: httpx.Response) -> str:
    """The error's code, read from the route's own envelope (asserting its shape)."""
    body = response.json()
    if route == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return body["error"]["code"]
    if route == "legacy":
        assert body["result"] == "error" and set(body["error"]) == {"code", "description"}
        return body["error"]["code"]
    assert set(body) == {"detail", "code", "param"}
    return body["code"]


def _post(http: httpx.Client, route: str, content: bytes) -> httpx.Response:
    call = chat_call(route, None, scope=ROUTES[route])
    return http.post(call.path, content=content, headers={**call.headers, "content-type": "application/json"})


def _many_messages(route: str, n: int) -> dict:
    """n messages as each dialect takes them: a system prompt, then user and assistant turns
    alternating, ending with the user's (Infomaniak's legacy route wants exactly that)."""
    turns = [{"role": "user" if j % 2 == 0 else "assistant", "content": "hi"} for j in range(n - 1)]
    body = chat_call(route, None, scope=ROUTES[route]).body
    if route == "egp":
        return {**body, "chat_history": [{"role": "system", "content": "be brief"}, *turns[:-1]]}
    if route == "legacy":
        return {**body, "system_prompt": "be brief", "messages": turns}
    return {**body, "messages": [{"role": "system", "content": "be brief"}, *turns]}


@pytest.mark.parametrize("route", ROUTES)
def test_a_12_mb_body_is_413(http, route):
    body = chat_call(route, None, scope=ROUTES[route]).body
    big = json.dumps({**body, "prompt" if route == "egp" else "messages": "x" * 12_000_000}).encode()
    response = _post(http, route, big)
    assert response.status_code == 413, response.text[:500]
    assert _error(route, response) == "request_too_large"


@pytest.mark.parametrize("route", ROUTES)
def test_a_12_mb_body_without_a_length_is_refused_as_it_arrives(http, route):
    sent = 0

    def chunks():  # chunked transfer: the server counts as it reads
        nonlocal sent
        for _ in range(12):
            sent += 1
            yield b" " * 1_000_000

    call = chat_call(route, None, scope=ROUTES[route])
    response = http.post(call.path, content=chunks(), headers={**call.headers, "content-type": "application/json"})
    assert response.status_code == 413, response.text[:500]
    assert _error(route, response) == "request_too_large"


@pytest.mark.parametrize("route", ROUTES)
def test_a_100000_deep_nesting_is_400(http, route):
    body = json.dumps(chat_call(route, None, scope=ROUTES[route]).body)
    deep = body[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = _post(http, route, deep.encode())
    assert response.status_code == 400
    assert _error(route, response) in ("json_too_deep", "validation_error")
    if route != "legacy":  # Infomaniak's envelope keeps its own codes for validation failures
        assert _error(route, response) == "json_too_deep"


@pytest.mark.parametrize("route", ROUTES)
def test_5000_messages_are_400_before_any_tokenizing(http, route):
    response = _post(http, route, json.dumps(_many_messages(route, 5000)).encode())
    assert response.status_code == 400
    assert _error(route, response) in ("array_above_max_length", "validation_error")
    assert "maximum length 2048" in response.text


@pytest.mark.parametrize("route", [*ROUTES, "completions", "tokenize"])
def test_a_lone_surrogate_in_the_text_is_400(http, route):
    """JSON may carry "\\ud800" alone; Python keeps it, no tokenizer takes it: the caller's error."""
    if route == "tokenize":
        path, body, headers = "/tokenize", {"model": "smollm2", "prompt": "\ud800 hi"}, {}
    else:
        call = chat_call(route, None, scope=ROUTES.get(route), prompt="\ud800 hi")
        path, body, headers = call.path, call.body, call.headers
    response = http.post(path, content=json.dumps(body).encode(), headers={**headers, "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "is not valid Unicode: a lone surrogate" in str(response.json())
    _error(route if route in ROUTES else "openai", response)  # the route's own envelope


def test_the_server_is_healthy_after_the_refusals(http):
    assert http.get("/health").status_code == 200
    call = chat_call("openai", None)
    response = http.post(call.path, json=call.body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("route", ROUTES)
def test_a_method_the_path_does_not_take_is_405_in_its_envelope(http, route):
    call = chat_call(route, None, scope=ROUTES[route])
    response = http.put(call.path, json=call.body)
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    _error(route, response)


# -- the rules themselves --------------------------------------------------------------------------

def _nest(depth: int) -> bytes:
    return b'{"a": ' * (depth - 1) + b"[1]" + b"}" * (depth - 1)


@pytest.mark.parametrize("body, limit, deeper", [
    (_nest(64), 64, False),  # exactly the bound
    (_nest(65), 64, True),
    (b'{"s": "' + b"[" * 500 + b'"}', 8, False),  # brackets inside a string are text
    (b'{"s": "\\"' + b"[" * 500 + b'"}', 8, False),  # ... after an escaped quote too
    (b"[" * 100_000 + b"]" * 100_000, 64, True),
    (b"]" * 500 + b"[" * 500, 8, False),  # not JSON: left to the parser
    (b"[]" * 4_000_000, 64, False),  # 8 MB of shallow brackets: one round
])
def test_json_depth(body, limit, deeper):
    assert json_depth_exceeds(body, limit) is deeper


def test_the_bounds_count_prompts_and_tool_calls():
    limits = RequestLimits(max_body_bytes=1000, max_json_depth=8, max_messages=3, max_prompt_chars=20)
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')  # 28 characters
    with pytest.raises(RequestBoundError, match="20 are accepted") as refused:
        limits.check(ChatRequest("r", None, [ChatMessage("assistant", None, tool_calls=[call])]))
    assert (refused.value.code, refused.value.param) == ("string_above_max_length", "messages")
    with pytest.raises(RequestBoundError) as refused:
        limits.check(ChatRequest("r", None, [], prompts=["a", [1, 2], "b", "c"]))
    assert (refused.value.code, refused.value.param) == ("array_above_max_length", "prompt")
    limits.check(ChatRequest("r", None, [], prompts=["hello", list(range(15))]))  # 20: within
