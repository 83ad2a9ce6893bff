"""Errors as data, and a route class that renders them in each dialect's own envelope.

Every dialect router is built with `dialect_route_class(render)`: request validation failures and
the typed service errors raised by its handlers become an `ApiError`, which `render` turns into
that dialect's JSON envelope. No 500 for bad input, and no error text matched by pattern.
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
from chatforge.service.errors import ChatError, GenerationFailedError, OverloadedError

log = logging.getLogger("chatforge.api")

# OpenAI's error `type` for each status; other dialects pick their own words.
KIND = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
        404: "not_found_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}


@dataclass
class ApiError:
    status: int
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return KIND.get(self.status, "invalid_request_error")


# Pydantic puts the member of a union it tried into the error's location ("content", "str";
# "stop", "list[str]"); those are types, not parameters, and stay out of `param`.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def _is_type_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part or part.startswith(("function-", "constrained-", "json-or-python"))


def from_validation(exc: RequestValidationError) -> ApiError:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _is_type_tag(str(p))]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return ApiError(400, "invalid_request_error", "the request body is not valid JSON")
    if err.get("type") == "extra_forbidden":
        return ApiError(400, "invalid_request_error", f"Unrecognized request argument supplied: {param}", param)
    msg = err.get("msg", "invalid value")
    return ApiError(400, "invalid_request_error", f"{param}: {msg}" if param else msg, param)


def stream_failure(exc: Exception) -> ChatError:
    """What a client hears of a failure after its stream began (the status line is sent, so it
    goes into the stream): a service error as it is; anything else is a bug, logged here with its
    traceback and told as 500 internal_error without its text."""
    if isinstance(exc, ChatError):
        return exc
    log.error("stream failed", exc_info=exc)
    return GenerationFailedError("internal server error")


def from_exception(exc: Exception) -> ApiError | None:
    """The ApiError for a known exception type; None for an unexpected one."""
    if isinstance(exc, RequestValidationError):
        return from_validation(exc)
    if isinstance(exc, HTTPException):  # e.g. a body that is not UTF-8
        return ApiError(exc.status_code, KIND.get(exc.status_code, "invalid_request_error"), str(exc.detail))
    if isinstance(exc, ChatError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, OverloadedError) else {}
        return ApiError(exc.status, exc.code, exc.message, exc.param, headers)
    status = getattr(exc, "status", None)  # platform errors carry status, code and headers
    if isinstance(status, int) and hasattr(exc, "code"):
        return ApiError(status, exc.code, str(exc), getattr(exc, "param", None), dict(getattr(exc, "headers", {}) or {}))
    return None


def dialect_route_class(render: Callable[[ApiError], Response]) -> type[APIRoute]:
    class DialectRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
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
