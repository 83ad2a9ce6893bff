"""Scale EGP v4 route. Handlers hold no logic: deployment -> translate -> service -> translate.

Streams follow Scale's SDK: every SSE `data:` is a whole response object, an error after the
stream has begun arrives as `event: error`, and there is no `[DONE]` (the SDK would try to
parse it as a response)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from chatforge.api.deps import ApiKeyPrincipal, CatalogDep, DeploymentCaller, PlatformDep, ServingDep
from chatforge.api.egp import translate
from chatforge.api.egp.schemas import CompletionResponse, EgpChatRequest, EgpErrorResponse, EgpModelDeploymentList
from chatforge.api.errors import MISSING_PARAMETER, ApiError, dialect_route_class


DIALECT = "egp"


def render_error(err: ApiError) -> JSONResponse:
    # OpenAI's finer code for a missing field is not among EGP's documented ones: here it stays
    # invalid_request_error (the message still says which field is missing).
    code = "invalid_request_error" if err.code == MISSING_PARAMETER else err.code
    return JSONResponse(translate.error_body(code, err.message, err.param), status_code=err.status, headers=err.headers)


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
    router = APIRouter(route_class=dialect_route_class(render_error, DIALECT), tags=["egp"])

    @router.post("/v4/models/{model_deployment_id}/chat-completions", responses=RESPONSES, response_model=None)
    async def chat_completions(model_deployment_id: str, body: EgpChatRequest, request: Request,
                               caller: DeploymentCaller, serving: ServingDep):
        req = translate.to_internal(body, "egp-" + secrets.token_hex(12))
        return await serving.serve(request, DIALECT, req, caller, lambda _: translate.EgpCodec(body.prompt, body.logprobs))

    @router.get("/v4/model-deployments", response_model=EgpModelDeploymentList,
                responses={401: RESPONSES[401]}, summary="The deployments the key may use")
    async def model_deployments(principal: ApiKeyPrincipal, platform: PlatformDep, catalog: CatalogDep,
                                account_id: Annotated[str | None, Query(description="only this account's")] = None,
                                limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
                                page: Annotated[int, Query(ge=1)] = 1):
        items = [translate.deployment_item(s, catalog.default.model_id) for s in await platform.list_deployments(principal)]
        if account_id is not None:
            items = [item for item in items if item["account_id"] == account_id]
        return {"items": items[(page - 1) * limit:page * limit], "current_page": page, "items_per_page": limit,
                "total_item_count": len(items)}

    return router


__all__ = ["build_router"]
