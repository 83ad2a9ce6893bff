"""Every HTTP request gets an id as it arrives: its log lines carry it (chatforge.logs), and its
response says it in `x-request-id` unless the route set its own (a chat request's id, which is
also its usage row's)."""

from __future__ import annotations

import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatforge.logs import begin_request, current_request_id, end_request


class RequestIds:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = begin_request("req-" + secrets.token_hex(8))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("x-request-id", current_request_id() or "-")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            end_request(token)
