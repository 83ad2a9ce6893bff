"""Logging set-up: one line per event, each with the id of the request it belongs to (`-` for
none), never prompt or completion text unless asked for.

The id travels in a context variable: the HTTP layer gives every request one as it arrives
(api/request_ids.py) and renames it to the request's own id (`chatcmpl-...`, the
`x-request-id` of its response and the id of its usage row) once the route has made it; every
line logged meanwhile, in that request's task or the tasks it starts, carries it.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestTag:
    """The id of the request being served; mutable, so a rename reaches every line after it."""

    __slots__ = ("id",)

    def __init__(self, request_id: str):
        self.id = request_id


_current: ContextVar[RequestTag | None] = ContextVar("chatforge_request", default=None)


def begin_request(request_id: str):
    """Tag this context (an HTTP request's task) with `request_id`; returns the token to reset."""
    return _current.set(RequestTag(request_id))


def end_request(token) -> None:
    _current.reset(token)


def current_request_id() -> str | None:
    tag = _current.get()
    return tag.id if tag is not None else None


def rename_request(request_id: str) -> None:
    """The request now has its own id: log it under that from here on."""
    tag = _current.get()
    if tag is not None:
        tag.id = request_id


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        tag = _current.get()
        record.request_id = tag.id if tag is not None else "-"
        return True


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
