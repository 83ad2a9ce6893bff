"""Infomaniak routes: the deprecated legacy `POST /1/llm/{product_id}`, the product listing
`GET /1/ai`, and the published profile presets. (The successor API, `/1/ai/{product_id}/openai/...`,
speaks OpenAI's dialect and lives with it, in api/openai/router.py.) Handlers hold no logic:
translate -> serve (admit, answer) -> codec."""

from __future__ import annotations

import secrets
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

from chatforge.api.deps import BearerPrincipal, CatalogDep, PlatformDep, ProductCaller, ServingDep
from chatforge.api.errors import ApiError, dialect_route_class
from chatforge.api.infomaniak import translate
from chatforge.api.infomaniak.schemas import (
    InfomaniakErrorResponse, InfomaniakProductList, LegacyRequest, LegacyResponse, ProfilePresets,
)
from chatforge.platform.gate import Principal
from chatforge.service.catalog import ModelCatalog

DIALECT = "infomaniak"
PROFILES_PATH = "/1/llm/profiles"


def render_error(err: ApiError) -> JSONResponse:
    body = translate.error_body(err.status, err.code, err.message)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


class LegacyRoute(dialect_route_class(render_error, DIALECT)):
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


async def legacy_chat(request: Request, product_id: int, body: LegacyRequest, caller: ProductCaller,
                      serving: ServingDep):
    req = translate.to_internal(body, "llm-" + secrets.token_hex(12))
    return await serving.serve(request, DIALECT, req, caller, translate.LegacyCodec.of)


def usable_models(names: list[str], catalog: ModelCatalog, principal: Principal) -> list[str]:
    """The names the caller's key may use, as the model lists filter them (a served model is
    allowed by its id or any alias; a name nothing serves, by itself)."""

    def answers_to(name: str) -> tuple[str, ...]:
        if name not in catalog:
            return (name,)
        model = catalog.get(name)
        return (model.model_id, *model.aliases)

    return [name for name in names if principal.may_use_model(answers_to(name))]


def build_router() -> APIRouter:
    router = APIRouter(tags=["infomaniak"])
    legacy = APIRouter(route_class=LegacyRoute)
    envelope = APIRouter(route_class=dialect_route_class(render_error, DIALECT))

    legacy.add_api_route("/1/llm/{product_id}", legacy_chat, methods=["POST"], deprecated=True,
                         responses=LEGACY_RESPONSES, response_model=None, summary="Query model LLM (deprecated)")

    @envelope.get(PROFILES_PATH, response_model=ProfilePresets, summary="The profile_type presets (public)")
    async def profiles():
        return translate.profiles_body()

    @envelope.get("/1/ai", response_model=InfomaniakProductList, summary="The caller's LLM API products")
    async def products(principal: BearerPrincipal, platform: PlatformDep, catalog: CatalogDep):
        every = [m.model_id for m in catalog.models]
        data = [{"id": p.id, "name": p.name, "models": usable_models(list(p.models) or every, catalog, principal)}
                for p in await platform.list_products(principal)]
        return {"result": "success", "data": data}

    for sub in (envelope, legacy):
        router.include_router(sub)
    return router


__all__ = ["build_router"]
