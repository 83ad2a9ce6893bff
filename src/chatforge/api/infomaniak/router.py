"""Infomaniak routes: the deprecated legacy `POST /1/llm/{product_id}`, its OpenAI-format
successor `POST /1/ai/{product_id}/openai/chat/completions`, the product listings, and the
published profile presets. Handlers hold no logic: scope -> translate -> service -> translate."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatforge.api.errors import ApiError, dialect_route_class
from chatforge.api.infomaniak import translate
from chatforge.api.infomaniak.schemas import ErrorResponse, LegacyRequest, LegacyResponse, ProductList, Profiles
from chatforge.api.openai import router as openai_dialect
from chatforge.api.openai.schemas import ChatCompletionRequest, ModelList
from chatforge.api.serving import Serving
from chatforge.api.sse import sse_data, sse_event, sse_response
from chatforge.platform.gate import is_loopback_host
from chatforge.service.catalog import ModelCatalog
from chatforge.service.errors import ChatError, ModelNotFoundError
from chatforge.service.protocol import ChatEvent
from chatforge.settings import Settings

log = logging.getLogger("chatforge.api.infomaniak")

DIALECT = "infomaniak"
SUCCESSOR_DIALECT = "infomaniak_openai"
MAX_TOKENS = 5000  # the successor's documented max_tokens bound
SUCCESSOR_PATH = "/1/ai/{product_id}/openai/chat/completions"


class ProductNotFoundError(ChatError):
    status = 404
    code = "product_not_found"


@dataclass(frozen=True)
class ProductScope:
    """What a request under `product_id` may use."""

    id: int
    name: str
    models: tuple[str, ...]  # ids or aliases as configured; empty = every served model
    default_model: str | None  # None: the server's default

    def model_for(self, requested: str | None, catalog: ModelCatalog) -> str | None:
        """The model this request runs on: the product's default when none was named."""
        if requested is None:
            return self.default_model
        wanted = catalog.canonical_id(requested)  # ModelNotFoundError for an unknown name
        if self.models and not any(m in catalog and catalog.canonical_id(m) == wanted for m in self.models):
            raise ModelNotFoundError(f"The model `{requested}` is not offered by product {self.id}.", param="model")
        return requested

    def model_names(self, catalog: ModelCatalog) -> list[str]:
        return list(self.models) or [m.model_id for m in catalog.models]


def resolve_product(settings: Settings, product_id: int) -> ProductScope:
    """A configured product, or in open mode (no keys, loopback) any id as an open product on
    the server's models. NOTE: the platform round replaces this with its database lookup."""
    config = settings.products.get(product_id)
    if config is not None:
        models = tuple(dict.fromkeys([*([config.model] if config.model else []), *config.models]))
        default = config.model or (config.models[0] if config.models else None)
        return ProductScope(product_id, config.name, models, default)
    if is_loopback_host(settings.host) or settings.allow_open_remote:
        return ProductScope(product_id, "", (), None)
    raise ProductNotFoundError(f"Product {product_id} does not exist.", param="product_id")


def render_error(err: ApiError) -> JSONResponse:
    body = translate.error_body(err.status, err.code, err.message)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


class LegacyRoute(dialect_route_class(render_error)):
    """Every answer of the deprecated route, errors included, points at its successor."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            response = await handler(request)
            successor = SUCCESSOR_PATH.format(product_id=request.path_params.get("product_id", ""))
            response.headers["Deprecation"] = "true"
            response.headers["Link"] = f'<{successor}>; rel="successor-version"'
            return response

        return route


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)}
LEGACY_RESPONSES = {200: {"model": LegacyResponse, "content": {"text/event-stream": {"schema": {"type": "string"}}}}, **ERRORS}


async def legacy_chat(request: Request, product_id: int, body: LegacyRequest):
    serving: Serving = request.app.state.serving
    scope = resolve_product(request.app.state.settings, product_id)
    model = scope.model_for(body.model, request.app.state.catalog)
    prep = serving.prepare(DIALECT, translate.to_internal(body, "llm-" + secrets.token_hex(12), model))
    model_name = model or prep.model.model_id
    if not body.stream:
        result = await serving.complete(request, DIALECT, prep)
        return JSONResponse(translate.to_response(result, model_name))
    events = await serving.open_stream(DIALECT, prep)
    return sse_response(frames(events, translate.StreamWriter(model_name, prep.created)))


async def frames(events: AsyncIterator[ChatEvent], writer: translate.StreamWriter) -> AsyncIterator[bytes]:
    """SSE bytes for a stream that has begun, ending with `data: [DONE]`. Its status line is
    sent, so a failure becomes an `event: error` carrying the error envelope, and ends it."""
    try:
        async for event in events:
            for data in writer.objects(event):
                yield sse_data(data)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an event
        status, code, message = 500, "internal_error", "internal server error"
        if isinstance(exc, ChatError):
            status, code, message = exc.status, exc.code, exc.message
        else:
            log.exception("stream failed")
        yield sse_event("error", translate.error_body(status, code, message))
        return
    yield sse_data("[DONE]")


def build_router() -> APIRouter:
    router = APIRouter(tags=["infomaniak"])
    legacy = APIRouter(route_class=LegacyRoute)
    envelope = APIRouter(route_class=dialect_route_class(render_error))
    successor = APIRouter(route_class=dialect_route_class(openai_dialect.render_error))

    legacy.add_api_route("/1/llm/{product_id}", legacy_chat, methods=["POST"], deprecated=True,
                         responses=LEGACY_RESPONSES, response_model=None, summary="Query model LLM (deprecated)")

    @envelope.get("/1/llm/profiles", response_model=Profiles, summary="The profile_type presets")
    async def profiles():
        return translate.profiles_body()

    @envelope.get("/1/ai", response_model=ProductList, summary="The caller's LLM API products")
    async def products(request: Request):
        settings, catalog = request.app.state.settings, request.app.state.catalog
        scopes = [resolve_product(settings, pid) for pid in sorted(settings.products)]
        data = [{"id": s.id, "name": s.name, "models": s.model_names(catalog)} for s in scopes]
        return {"result": "success", "data": data}

    @successor.post(SUCCESSOR_PATH, responses=openai_dialect.CHAT_RESPONSES, response_model=None)
    async def successor_chat(product_id: int, body: ChatCompletionRequest, request: Request):
        resolve_product(request.app.state.settings, product_id).model_for(body.model, request.app.state.catalog)
        return await openai_dialect.serve_chat(request, body, dialect=SUCCESSOR_DIALECT, max_tokens_cap=MAX_TOKENS)

    @successor.get("/1/ai/{product_id}/openai/models", response_model=ModelList)
    async def product_models(product_id: int, request: Request):
        catalog: ModelCatalog = request.app.state.catalog
        scope = resolve_product(request.app.state.settings, product_id)
        cards = {card["id"]: card for card in openai_dialect.models_body(catalog)["data"]}
        names = [n for n in scope.model_names(catalog) if n in catalog]
        return {"object": "list", "data": [{**cards[catalog.canonical_id(n)], "id": n} for n in names]}

    for sub in (envelope, legacy, successor):  # the fixed /1/llm/profiles before /1/llm/{id}
        router.include_router(sub)
    return router


__all__ = ["build_router", "resolve_product", "ProductScope"]
