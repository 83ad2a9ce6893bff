"""Infomaniak routes: the deprecated legacy `POST /1/llm/{product_id}`, its OpenAI-format
successor `POST /1/ai/{product_id}/openai/chat/completions`, the product listings, and the
published profile presets. Handlers hold no logic: scope -> translate -> service -> translate."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

from chatforge.api.deps import BearerPrincipal, ProductCaller, listed_products
from chatforge.api.errors import ApiError, dialect_route_class, stream_failure
from chatforge.api.infomaniak import translate
from chatforge.api.infomaniak.schemas import (
    InfomaniakErrorResponse, InfomaniakProductList, LegacyRequest, LegacyResponse, ProfilePresets,
)
from chatforge.api.openai import router as openai_dialect
from chatforge.api.openai.schemas import ChatCompletionRequest, ModelList
from chatforge.api.serving import Serving
from chatforge.api.sse import sse_data, sse_event, sse_response
from chatforge.service.catalog import ModelCatalog
from chatforge.service.protocol import ChatEvent


DIALECT = "infomaniak"
SUCCESSOR_DIALECT = "infomaniak_openai"
MAX_TOKENS = 5000  # the successor's documented max_tokens bound
SUCCESSOR_PATH = "/1/ai/{product_id}/openai/chat/completions"
PROFILES_PATH = "/1/llm/profiles"


def render_error(err: ApiError) -> JSONResponse:
    body = translate.error_body(err.status, err.code, err.message)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


class LegacyRoute(dialect_route_class(render_error)):
    """Every answer of the deprecated route, errors included, points at its successor."""

    def matches(self, scope):
        # `/1/llm/profiles` is the presets' read-only path, not a product id: a POST there is 405.
        match, child = super().matches(scope)
        if match is not Match.NONE and child.get("path_params", {}).get("product_id") == "profiles":
            return Match.NONE, {}
        return match, child

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            response = await handler(request)
            # the id as sent (a bad one is answered too), quoted: headers are latin-1
            product_id = quote(str(request.path_params.get("product_id", "")), safe="")
            successor = f"/1/ai/{product_id}/openai/chat/completions"
            response.headers["Deprecation"] = "true"
            response.headers["Link"] = f'<{successor}>; rel="successor-version"'
            return response

        return route


ERRORS = {code: {"model": InfomaniakErrorResponse} for code in (400, 401, 403, 404, 429, 503)}
# One SSE event (OpenAPI 3.1 describes each event of a stream): a `data` object as JSON, the
# closing `[DONE]`, or under `event: error` the error envelope.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"enum": ["message", "error"]}, "data": {"type": "string"}},
}
LEGACY_RESPONSES = {200: {"model": LegacyResponse, "content": {"text/event-stream": {"schema": SSE_EVENT}}}, **ERRORS}


async def legacy_chat(request: Request, product_id: int, body: LegacyRequest, caller: ProductCaller):
    serving: Serving = request.app.state.serving
    model = caller.model_for(body.model, request.app.state.catalog)
    ticket = await serving.admit(DIALECT, translate.to_internal(body, "llm-" + secrets.token_hex(12), model), caller)
    model_name = model or ticket.prep.model.model_id
    if not body.stream:
        result = await serving.complete(request, ticket)
        return JSONResponse(translate.to_response(result, model_name), headers=ticket.headers)
    events = await serving.open_stream(ticket)
    return sse_response(frames(events, translate.StreamWriter(model_name, ticket.prep.created)), headers=ticket.headers)


async def frames(events: AsyncIterator[ChatEvent], writer: translate.StreamWriter) -> AsyncIterator[bytes]:
    """SSE bytes for a stream that has begun, ending with `data: [DONE]`. Its status line is
    sent, so a failure becomes an `event: error` carrying the error envelope, and ends it."""
    try:
        async for event in events:
            for data in writer.objects(event):
                yield sse_data(data)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an event
        err = stream_failure(exc)
        yield sse_event("error", translate.error_body(err.status, err.code, err.message))
        return
    yield sse_data("[DONE]")


def build_router() -> APIRouter:
    router = APIRouter(tags=["infomaniak"])
    legacy = APIRouter(route_class=LegacyRoute)
    envelope = APIRouter(route_class=dialect_route_class(render_error))
    successor = APIRouter(route_class=dialect_route_class(openai_dialect.render_error))

    legacy.add_api_route("/1/llm/{product_id}", legacy_chat, methods=["POST"], deprecated=True,
                         responses=LEGACY_RESPONSES, response_model=None, summary="Query model LLM (deprecated)")

    @envelope.get(PROFILES_PATH, response_model=ProfilePresets, summary="The profile_type presets (public)")
    async def profiles():
        return translate.profiles_body()

    @envelope.get("/1/ai", response_model=InfomaniakProductList, summary="The caller's LLM API products")
    async def products(request: Request, principal: BearerPrincipal):
        state = request.app.state
        scopes = await listed_products(state.platform, state.settings, principal)
        data = [{"id": s.id, "name": s.name, "models": s.model_names(state.catalog)} for s in scopes]
        return {"result": "success", "data": data}

    @successor.post(SUCCESSOR_PATH, responses=openai_dialect.CHAT_RESPONSES, response_model=None)
    async def successor_chat(product_id: int, body: ChatCompletionRequest, request: Request, caller: ProductCaller):
        caller.model_for(body.model, request.app.state.catalog)
        return await openai_dialect.serve_chat(request, body, caller, dialect=SUCCESSOR_DIALECT, max_tokens_cap=MAX_TOKENS)

    @successor.get("/1/ai/{product_id}/openai/models", response_model=ModelList, responses=openai_dialect.ERROR_RESPONSES)
    async def product_models(product_id: int, request: Request, caller: ProductCaller):
        catalog: ModelCatalog = request.app.state.catalog
        scope = caller.product
        cards = {card["id"]: card for card in openai_dialect.models_body(catalog)["data"]}
        names = [n for n in scope.model_names(catalog) if n in catalog]
        return {"object": "list", "data": [{**cards[catalog.canonical_id(n)], "id": n} for n in names]}

    for sub in (envelope, legacy, successor):
        router.include_router(sub)
    return router


__all__ = ["build_router"]
