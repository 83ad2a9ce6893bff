"""Scale EGP v4 route. Handlers hold no logic: deployment -> translate -> service -> translate.

Streams follow Scale's SDK: every SSE `data:` is a whole response object, an error after the
stream has begun arrives as `event: error`, and there is no `[DONE]` (the SDK would try to
parse it as a response)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from typing import Annotated

from fastapi import Query

from chatforge.api.deps import ApiKeyPrincipal, DeploymentCaller, listed_deployments
from chatforge.api.egp import translate
from chatforge.api.egp.schemas import CompletionResponse, EgpChatRequest, EgpErrorResponse, EgpModelDeploymentList
from chatforge.api.errors import ApiError, dialect_route_class, stream_failure
from chatforge.api.serving import Serving
from chatforge.api.sse import sse_data, sse_event, sse_response
from chatforge.service.protocol import ChatEvent


DIALECT = "egp"


def render_error(err: ApiError) -> JSONResponse:
    return JSONResponse(translate.error_body(err.code, err.message, err.param), status_code=err.status, headers=err.headers)


async def frames(events: AsyncIterator[ChatEvent], writer: translate.StreamWriter) -> AsyncIterator[bytes]:
    """SSE bytes for a stream that has begun: its status line is sent, so a failure becomes an
    `event: error` carrying the error body, and the stream ends there."""
    try:
        async for event in events:
            for obj in writer.objects(event):
                yield sse_data(obj)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an event
        err = stream_failure(exc)
        yield sse_event("error", translate.error_body(err.code, err.message, err.param))


# One SSE event (OpenAPI 3.1 describes each event of a stream): a whole response as JSON, or
# under `event: error` an error body.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"enum": ["message", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [{"$ref": "#/components/schemas/CompletionResponse"},
                                        {"$ref": "#/components/schemas/EgpErrorResponse"}]},
        },
    },
}
RESPONSES = {
    200: {"model": CompletionResponse, "content": {"text/event-stream": {"schema": SSE_EVENT}}},
    **{code: {"model": EgpErrorResponse} for code in (400, 401, 403, 404, 429, 503)},
}


def build_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route_class(render_error), tags=["egp"])

    @router.post("/v4/models/{model_deployment_id}/chat-completions", responses=RESPONSES, response_model=None)
    async def chat_completions(model_deployment_id: str, body: EgpChatRequest, request: Request,
                               caller: DeploymentCaller):
        serving: Serving = request.app.state.serving
        model = caller.model_for(None, request.app.state.catalog)
        ticket = await serving.admit(DIALECT, translate.to_internal(body, "egp-" + secrets.token_hex(12), model), caller)
        if not body.stream:
            result = await serving.complete(request, ticket)
            return JSONResponse(translate.to_response(result, body.prompt), headers=ticket.headers)
        events = await serving.open_stream(ticket)
        return sse_response(frames(events, translate.StreamWriter(body.prompt, body.logprobs)), headers=ticket.headers)

    @router.get("/v4/model-deployments", response_model=EgpModelDeploymentList,
                responses={401: RESPONSES[401]}, summary="The deployments the key may use")
    async def model_deployments(request: Request, principal: ApiKeyPrincipal,
                                account_id: Annotated[str | None, Query(description="only this account's")] = None,
                                limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
                                page: Annotated[int, Query(ge=1)] = 1):
        state = request.app.state
        scopes = await listed_deployments(state.platform, state.settings, principal)
        items = [translate.deployment_item(s, state.catalog.default.model_id) for s in scopes]
        if account_id is not None:
            items = [item for item in items if item["account_id"] == account_id]
        return {"items": items[(page - 1) * limit:page * limit], "current_page": page, "items_per_page": limit,
                "total_item_count": len(items)}

    return router


__all__ = ["build_router", "frames"]
