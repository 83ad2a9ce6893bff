"""Bounds on one request, checked before any of it costs much: the body's size while it is read
(a 12 MB body is refused at its first bytes over the bound, never held whole), its JSON nesting
before the parser sees it, and the number of messages and characters of text before the chat
template and the tokenizer run. Each refusal is a typed error, so every dialect answers it in
its own envelope. The bounds are `settings.limits` (LimitsConfig), copied here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request

from chatforge.errors import ChatforgeError
from chatforge.service.protocol import ChatRequest


class RequestTooLargeError(ChatforgeError):
    status = 413
    code = "request_too_large"


class RequestBoundError(ChatforgeError):
    """A request over one of the bounds on its shape (400). Codes as OpenAI names them."""

    status = 400
    code = "invalid_request_error"

    def __init__(self, message: str, *, code: str, param: str | None = None):
        super().__init__(message, param=param)
        self.code = code


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int
    max_json_depth: int
    max_messages: int
    max_prompt_chars: int

    @classmethod
    def of(cls, config) -> RequestLimits:
        return cls(config.max_body_bytes, config.max_json_depth, config.max_messages, config.max_prompt_chars)

    async def read_body(self, request: Request) -> bytes:
        """The whole body, refused (413) as soon as it is known to exceed the bound: by its
        Content-Length before anything is read, else as its chunks arrive."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        body = b"".join(chunks)
        if json_depth_exceeds(body, self.max_json_depth):
            raise RequestBoundError(f"The request body nests arrays and objects deeper than {self.max_json_depth} levels.",
                                    code="json_too_deep")
        return body

    def check(self, req: ChatRequest) -> None:
        """The number of messages (or prompts) and their text, before any template or tokenizer runs."""
        param = "prompt" if req.prompts is not None else "messages"
        count = len(req.prompts) if req.prompts is not None else len(req.messages)
        if count > self.max_messages:
            raise RequestBoundError(f"Invalid '{param}': array too long. Expected an array with maximum length "
                                    f"{self.max_messages}, but got an array with length {count} instead.",
                                    code="array_above_max_length", param=param)
        if req.prompts is not None:
            chars = sum(len(p) for p in req.prompts)  # a prompt of token ids counts one per id
        else:  # a turn's text, and the calls an assistant turn made
            chars = sum(len(m.content or "") + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
                        for m in req.messages)
        if chars > self.max_prompt_chars:
            raise RequestBoundError(f"Invalid '{param}': {chars} characters of text; at most {self.max_prompt_chars} "
                                    "are accepted in one request.", code="string_above_max_length", param=param)

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"The request body is larger than {self.max_body_bytes} bytes.")


async def bounded_request(request: Request) -> Request:
    """`request` with its body read under the app's limits and replayed to the route; once the
    body is replayed, `receive` goes on to the server's (so a disconnect is still heard)."""
    body = await request.app.state.limits.read_body(request)
    replayed = False

    async def receive():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, receive)


# A JSON string, escapes included (the unrolled form: no backtracking per character).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text `body` nests arrays and objects more than `limit` deep. Malformed
    text is left to the parser (False), unless its brackets already nest too deep.

    NOTE: one `replace(b"[]", b"")` removes exactly the innermost pairs (it scans the original,
    so pairs it leaves empty stay for the next round): the depth is the number of rounds that
    empty the brackets. At most `limit` rounds, each at C speed, whatever the body: a Python
    loop per byte would spend seconds on an 8 MB body, and the parser's recursion is what must
    not be reached."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(_ONE_KIND, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # nothing pairs up: not JSON, the parser says so
        brackets = shorter
    return bool(brackets) and len(brackets.replace(b"[]", b"")) < len(brackets)


class QueueTimeoutError(ChatforgeError):
    """The engine did not start the request within the queue timeout (it was waiting behind
    others, or its prefill was that long): it was taken off the queue."""

    status = 503
    code = "queue_timeout"

    def __init__(self, waited_s: float, retry_after: int = 1):
        super().__init__(f"The request waited {waited_s:g} s for the engine and was withdrawn; the server is busy, "
                         "retry shortly.", headers={"Retry-After": str(retry_after)})
