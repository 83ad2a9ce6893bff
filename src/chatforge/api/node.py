"""A node's internal routes (`chatforge serve --engine-only`): the token-level generate stream and
the load the gateways balance on (upstream/protocol.py has the format, upstream/node.py the work).

They are for gateways only: with `fleet.node_token` set, each call must carry it as a bearer
token (401 otherwise); without it, they are open to whoever reaches the node's address, which
should then be private. While the node drains, a new generate is 503 and the load says
`draining` (503). A stream whose gateway takes nothing for `server.stream_stall_timeout_s` is
aborted, as a client's would be (api/sse.py).
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatforge.api.sse import StallBoundedResponse
from chatforge.upstream.node import NodeServing
from chatforge.upstream.protocol import GENERATE_PATH, LOAD_PATH, MEDIA_TYPE

log = logging.getLogger("chatforge.node")


def _refused(request: Request) -> JSONResponse | None:
    token = request.app.state.settings.fleet.node_token
    if token is None:
        return None
    sent = request.headers.get("authorization", "")
    if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        return None
    return JSONResponse({"error": {"type": "unauthorized", "message": "a node token is required"}}, status_code=401)


def build_router() -> APIRouter:
    router = APIRouter(tags=["node"], include_in_schema=False)

    def serving(request: Request) -> NodeServing:
        return request.app.state.node

    @router.post(GENERATE_PATH)
    async def generate(request: Request):
        refused = _refused(request)
        if refused is not None:
            return refused
        if request.app.state.drain.draining:
            return JSONResponse({"error": {"type": "draining", "message": "this node is shutting down"}},
                                status_code=503, headers={"Retry-After": "5"})
        lines = serving(request).stream(await request.body())
        stall_s = request.app.state.settings.server.stream_stall_timeout_s
        return StallBoundedResponse(lines, stall_timeout_s=stall_s, media_type=MEDIA_TYPE, headers={"cache-control": "no-store"},
                                    on_stall=lambda: log.warning("a gateway took nothing for %.1f s: its request aborted", stall_s))

    @router.get(LOAD_PATH)
    async def load(request: Request):
        refused = _refused(request)
        if refused is not None:
            return refused
        watchdog = getattr(request.app.state, "watchdog", None)
        body = serving(request).load(stalled=watchdog.stalled if watchdog is not None else ())
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return router
