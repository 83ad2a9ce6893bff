"""A node's internal routes (`chatforge serve --engine-only`): the token-level generate stream and
the load the gateways balance on (upstream/protocol.py has the format, upstream/node.py the work).

They are for gateways only: with `fleet.node_token` set, each call must carry it as a bearer
token (401 otherwise); without it, they are open to whoever reaches the node's address, which
should then be private.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from chatforge.upstream.node import NodeServing
from chatforge.upstream.protocol import GENERATE_PATH, LOAD_PATH, MEDIA_TYPE


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
        lines = serving(request).stream(await request.body())
        return StreamingResponse(lines, media_type=MEDIA_TYPE, headers={"cache-control": "no-store"})

    @router.get(LOAD_PATH)
    async def load(request: Request):
        refused = _refused(request)
        if refused is not None:
            return refused
        body = serving(request).load()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return router
