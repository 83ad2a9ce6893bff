"""Every object the OpenAI-format routes send in the test suite, checked against OpenAI's own
published schemas (openai_spec/schemas.json: vendored from github.com/openai/openai-openapi,
with its source, commit and version inside).

`Conformance` wraps each test server's ASGI app (tests/api/conftest.py's LiveServer): it reads
every response of an OpenAI-format path as it goes out, JSON bodies whole and streams event by
event, validates each object, and records what fails; an autouse fixture fails the test that
caused it. The published schemas allow properties they do not list (none of the response
objects sets `additionalProperties: false`), so chatforge's additions (`usage.estimated_cost`,
a model's `context_length` and `max_model_len`) validate as they are.

Two places where the published document is narrower than OpenAI's API itself, both on the
legacy completions object, are relaxed here and nowhere else (see `_derived`):
- `token_logprobs` / `top_logprobs` items may be null: the first token of an echoed prompt has
  no logprob (nothing precedes it), and OpenAI, vLLM and llama.cpp send null there;
- a streamed chunk's `finish_reason` may be null: the document says streamed and whole objects
  share one shape, yet a stream can only say why it finished in its last chunk (OpenAI sends
  null before, as the chat chunk's schema allows).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator

SPEC = Path(__file__).parent / "openai_spec" / "schemas.json"

# path -> (schema of a 200 JSON body, schema of each streamed object); errors are ErrorResponse
_ROUTES = [
    (re.compile(r"^(/v1|/v1/openai|/1/ai/[^/]+/openai)/chat/completions$"),
     "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
    (re.compile(r"^(/v1|/v1/openai|/1/ai/[^/]+/openai)/completions$"), "TextCompletion", "TextCompletionChunk"),
    (re.compile(r"^(/v1|/v1/openai|/1/ai/[^/]+/openai)/models$"), "ListModelsResponse", None),
]


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": {"schemas": _schemas()}})


@cache
def _schemas() -> dict:
    schemas = json.loads(SPEC.read_text())["schemas"]
    return {**schemas, **_derived(schemas)}


def _derived(schemas: dict) -> dict:
    """CreateCompletionResponse with the two relaxations of the module docstring, and only those."""
    whole = copy.deepcopy(schemas["CreateCompletionResponse"])
    choice = whole["properties"]["choices"]["items"]["properties"]
    legacy_logprobs = choice["logprobs"]["anyOf"][0]["properties"]
    for field in ("token_logprobs", "top_logprobs"):
        legacy_logprobs[field]["items"] = {"anyOf": [legacy_logprobs[field]["items"], {"type": "null"}]}
    chunk = copy.deepcopy(whole)
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish["type"], finish["enum"] = ["string", "null"], [*finish["enum"], None]
    return {"TextCompletion": whole, "TextCompletionChunk": chunk}


def problems(name: str, obj) -> list[str]:
    """Why `obj` is not a valid `name` of OpenAI's API (empty when it is)."""
    return [f"{name}: {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in _validator(name).iter_errors(obj)]


class Recorder:
    def __init__(self):
        self._lock = threading.Lock()
        self._found: list[str] = []
        self.checked = 0  # objects validated so far (to show the check ran)

    def add(self, path: str, name: str, obj) -> None:
        found = problems(name, obj)
        with self._lock:
            self.checked += 1
            self._found.extend(f"{path}: {p}" for p in found)

    def take(self) -> list[str]:
        with self._lock:
            found, self._found = self._found, []
            return found


RECORDER = Recorder()


class Conformance:
    """ASGI middleware: validates what the OpenAI-format routes send, passes it on unchanged."""

    def __init__(self, app, recorder: Recorder = RECORDER):
        self.app = app
        self.recorder = recorder

    def __getattr__(self, name):  # app.state, app.openapi(), ... as the wrapped app's
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        route = next((r for r in _ROUTES if scope["type"] == "http" and r[0].match(scope["path"])), None)
        if route is None or scope["method"] == "OPTIONS":  # a CORS preflight is not an OpenAI object
            return await self.app(scope, receive, send)
        _, whole, streamed = route
        path = scope["path"]
        state = {"status": 200, "stream": False, "body": b"", "buffer": b""}

        async def checked_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = dict(message.get("headers", []))
                state["stream"] = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body":
                self._body(path, state, message.get("body", b""), message.get("more_body", False), whole, streamed)
            await send(message)

        await self.app(scope, receive, checked_send)

    def _body(self, path, state, chunk, more, whole, streamed):
        if state["stream"]:
            state["buffer"] += chunk
            *events, state["buffer"] = state["buffer"].split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        obj = json.loads(line[6:])
                        self.recorder.add(path, "ErrorResponse" if "error" in obj else streamed, obj)
            return
        state["body"] += chunk
        if more or state["status"] == 499 or not state["body"]:
            return
        obj = json.loads(state["body"])
        self.recorder.add(path, whole if state["status"] == 200 else "ErrorResponse", obj)
