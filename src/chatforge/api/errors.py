"""Errors as data, and a route class that renders them in each dialect's own envelope.

Every dialect router is built with `dialect_route_class(render, dialect)`: a body is read under the
request limits (api/limits.py) before it is parsed; request validation failures and
the typed errors raised by its handlers (one base, `chatforge.errors.ChatforgeError`, for the
service's and the platform's) become an `ApiError`, which `render` turns into that dialect's JSON
envelope. No 500 for bad input, and no error text matched by pattern.

Every answer such a route gives is counted in `chatforge_requests_total` once: a request handed
to the serving template is counted there (with its model, when it ends); any other answer, a
validation 400, a 401, an unexpected 500 or a model list, is counted here under `dialect`, with
no model; a 404 or 405 under a dialect's paths, which no route of it answered, by api/app.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from chatforge.api.disconnect import ClientDisconnected
from chatforge.api.limits import bounded_request
from chatforge.errors import ChatforgeError
from chatforge.service.errors import GenerationFailedError

log = logging.getLogger("chatforge.api")


@dataclass
class ApiError:
    status: int
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


# Pydantic puts the member of a union it tried into the error's location ("content", "str";
# "stop", "list[str]"); those are types, not parameters, and stay out of `param`.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def _is_type_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part or part.startswith(("function-", "constrained-", "json-or-python"))


def _param(loc: tuple, body) -> str | None:
    """The name of the field an error is about, as OpenAI's API writes it: keys joined by dots,
    list positions in brackets (`messages[1].tool_calls[0].function.arguments`), one format for
    every check, pydantic's and chatforge's own; a path or query parameter by its name alone.
    Pydantic's location also names the members of unions it tried: a type ("str", "list[...]")
    or, for a union told apart by a field, that field's value
    (`response_format.json_schema.json_schema.name`: the second `json_schema` is the `type`). A
    step that does not lead into the request body is such a member and is left out, unless it is
    the last (a field that is missing)."""
    if loc[:1] != ("body",):
        return param_name([p for p in loc[1:] if not _is_type_tag(str(p))])
    steps, at, kept = loc[1:], body, []
    for i, step in enumerate(steps):
        if isinstance(at, dict) and step in at:
            at = at[step]
        elif isinstance(at, list) and isinstance(step, int) and 0 <= step < len(at):
            at = at[step]
        elif i < len(steps) - 1:
            continue  # a union member's tag
        if not _is_type_tag(str(step)):
            kept.append(step)
    return param_name(kept)


def param_name(steps) -> str | None:
    """`["messages", 0, "role"]` as `messages[0].role`."""
    name = ""
    for step in steps:
        name += f"[{step}]" if isinstance(step, int) else f".{step}" if name else str(step)
    return name or None


MISSING_PARAMETER = "missing_required_parameter"


def from_validation(exc: RequestValidationError) -> ApiError:
    err = exc.errors()[0]
    param = _param(tuple(err.get("loc", ())), exc.body)
    if err.get("type") == "json_invalid":
        return ApiError(400, "invalid_request_error", "the request body is not valid JSON")
    if err.get("type") == "extra_forbidden":
        return ApiError(400, "invalid_request_error", f"Unrecognized request argument supplied: {param}", param)
    if err.get("type") == "missing":  # OpenAI's code and words; a dialect without the code renders its own
        return ApiError(400, MISSING_PARAMETER, f"Missing required parameter: '{param}'.", param)
    msg = err.get("msg", "invalid value")
    return ApiError(400, "invalid_request_error", f"{param}: {msg}" if param else msg, param)


def stream_failure(exc: Exception) -> ChatforgeError:
    """What a client hears of a failure after its stream began (the status line is sent, so it
    goes into the stream): a chatforge error as it is; anything else is a bug, logged here with
    its traceback and told as 500 internal_error without its text."""
    if isinstance(exc, ChatforgeError):
        return exc
    log.error("stream failed", exc_info=exc)
    return GenerationFailedError("internal server error")


def from_exception(exc: Exception) -> ApiError | None:
    """The ApiError for a known exception type; None for an unexpected one."""
    if isinstance(exc, RequestValidationError):
        return from_validation(exc)
    if isinstance(exc, HTTPException):  # e.g. a body that is not UTF-8
        code = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return ApiError(exc.status_code, code, str(exc.detail))
    if isinstance(exc, ChatforgeError):
        return ApiError(exc.status, exc.code, exc.message, exc.param, dict(exc.headers))
    return None


def dialect_route_class(render: Callable[[ApiError], Response], dialect: str) -> type[APIRoute]:
    """Routes rendering errors with `render`, counted in the metrics under `dialect`."""

    class DialectRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()
            reads_body = self.body_field is not None

            async def route(request: Request) -> Response:
                response = await answer(request)
                count_answer(request, dialect, response.status_code)
                return response

            async def answer(request: Request) -> Response:
                try:
                    if reads_body:  # read under the size and nesting bounds before FastAPI parses it
                        request = await bounded_request(request)
                    return await handler(request)
                except ClientDisconnected:
                    return Response(status_code=499)  # nobody is listening
                except Exception as exc:  # noqa: BLE001 - each known type is mapped, the rest logged
                    api_error = from_exception(exc)
                    if api_error is None:
                        log.exception("unexpected error on %s", request.url.path)
                        api_error = ApiError(500, "internal_error", "internal server error")
                    return render(api_error)

            return route

    return DialectRoute


def count_answer(request: Request, dialect: str, status: int) -> None:
    """Count an answer the serving template did not count (api/serving.py marks those it does),
    under `dialect` with no model."""
    if getattr(request.state, COUNTED_BY_SERVING, False):
        return
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe_refused(dialect, "", "aborted" if status == 499 else str(status))


# Set on `request.state` by the serving template: from then on, it counts the request itself.
COUNTED_BY_SERVING = "counted_by_serving"
