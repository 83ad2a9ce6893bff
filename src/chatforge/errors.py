"""The one base of every error chatforge raises toward a caller on purpose.

The service's errors (`service/errors.py`) and the platform's (`platform/errors.py`) both extend
it, so the API maps one type to each dialect's envelope: `status` is the HTTP status, `code` a
short stable machine code, `message` safe to show the caller (never a key, a prompt or a
completion), `param` the offending field when there is one, `headers` what the response must
carry (`Retry-After`, `x-ratelimit-*`). The engine keeps its own errors below: the service
translates them.
"""

from __future__ import annotations

from collections.abc import Mapping


class ChatforgeError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
