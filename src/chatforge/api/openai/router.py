"""OpenAI-format routes: chat completions, legacy completions and the model list, on OpenAI's
and DeepInfra's paths and on Infomaniak's successor API (the same dialect under
`/1/ai/{product_id}/openai/...`, scoped to the product: its models, its limits, `max_tokens` at
most 5000, and TGI's `response_format` values and `tool_prompt` accepted on its chat route).
Handlers hold no logic: translate -> serve (admit, answer) -> codec."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatforge.api.deps import BearerCaller, BearerPrincipal, CatalogDep, PlatformDep, ProductCaller, ServingDep
from chatforge.api.errors import ApiError, dialect_route_class
from chatforge.api.openai import completions, tokens, translate
from chatforge.api.openai.schemas import (
    ChatCompletion, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse, ErrorResponse,
    ModelList, ProductChatCompletionRequest, TextCompletion, TokenizeRequest, TokenizeResponse,
)
from chatforge.platform.gate import Principal
from chatforge.platform.scopes import Caller
from chatforge.service.catalog import ModelCatalog

DIALECT = "openai"
PRODUCT_DIALECT = "infomaniak_openai"  # the successor route's label in metrics and usage rows
PRODUCT_MAX_TOKENS = 5000  # the successor's documented max_tokens bound


def render_error(err: ApiError) -> JSONResponse:
    body = translate.error_body(err.message, translate.KIND.get(err.status, "invalid_request_error"), err.code, err.param)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)}
CHAT_RESPONSES = {
    200: {"model": ChatCompletion, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **ERROR_RESPONSES,
}
COMPLETION_RESPONSES = {
    200: {"model": TextCompletion, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **ERROR_RESPONSES,
}


async def _chat(request: Request, body: ChatCompletionRequest | ProductChatCompletionRequest, caller: Caller, serving: ServingDep,
                dialect: str = DIALECT, max_tokens_cap: int | None = None):
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    req = translate.to_internal(body, completion_id, max_tokens_cap=max_tokens_cap)
    options = body.stream_options
    return await serving.serve(request, dialect, req, caller, lambda prep: translate.ChatCodec(
        prep, completion_id,
        include_usage=bool(options and options.include_usage),
        continuous_usage=bool(options and options.continuous_usage_stats),
    ))


async def _completion(request: Request, body: CompletionRequest, caller: Caller, serving: ServingDep,
                      dialect: str = DIALECT, max_tokens_cap: int | None = None):
    completion_id = "cmpl-" + secrets.token_hex(12)
    req = completions.to_internal(body, completion_id, max_tokens_cap=max_tokens_cap)
    options = body.stream_options
    return await serving.serve(request, dialect, req, caller, lambda prep: completions.CompletionCodec(
        prep, completion_id, echo=bool(body.echo), logprobs=body.logprobs,
        include_usage=bool(options and options.include_usage),
        continuous_usage=bool(options and options.continuous_usage_stats),
    ))


def models_body(catalog: ModelCatalog, names: list[str] | None = None, principal: Principal | None = None) -> dict:
    """The model list: one card per name a request may use (each model's id, then its aliases),
    or these names (ids or aliases) as named; with a caller, only the models its key may use.
    `root` is the model's id, as vLLM writes it."""
    served = ([(n, m) for m in catalog.models for n in (m.model_id, *m.aliases)] if names is None
              else [(n, catalog.get(n)) for n in names])
    if principal is not None:
        served = [(n, m) for n, m in served if principal.may_use_model((m.model_id, *m.aliases))]
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": m.created,
                "owned_by": "chatforge",
                "root": m.model_id,
                "context_length": m.context_length,
                "max_model_len": m.context_length,
            }
            for name, m in served
        ],
    }


def build_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route_class(render_error, DIALECT), tags=["openai"])
    # Infomaniak's successor API: the same dialect, counted apart in the metrics
    product = APIRouter(route_class=dialect_route_class(render_error, PRODUCT_DIALECT), tags=["infomaniak"])

    @router.post("/v1/chat/completions", responses=CHAT_RESPONSES, response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request, caller: BearerCaller, serving: ServingDep):
        return await _chat(request, body, caller, serving)

    @router.post("/v1/openai/chat/completions", responses=CHAT_RESPONSES, response_model=None)
    async def deepinfra_chat_completions(body: ChatCompletionRequest, request: Request, caller: BearerCaller,
                                         serving: ServingDep):
        return await _chat(request, body, caller, serving)

    @product.post("/1/ai/{product_id}/openai/chat/completions", responses=CHAT_RESPONSES, response_model=None)
    async def product_chat_completions(product_id: int, body: ProductChatCompletionRequest, request: Request,
                                       caller: ProductCaller, serving: ServingDep):
        return await _chat(request, body, caller, serving, PRODUCT_DIALECT, PRODUCT_MAX_TOKENS)

    @router.post("/v1/completions", responses=COMPLETION_RESPONSES, response_model=None)
    async def text_completions(body: CompletionRequest, request: Request, caller: BearerCaller, serving: ServingDep):
        return await _completion(request, body, caller, serving)

    @router.post("/v1/openai/completions", responses=COMPLETION_RESPONSES, response_model=None)
    async def deepinfra_text_completions(body: CompletionRequest, request: Request, caller: BearerCaller,
                                         serving: ServingDep):
        return await _completion(request, body, caller, serving)

    @product.post("/1/ai/{product_id}/openai/completions", responses=COMPLETION_RESPONSES, response_model=None)
    async def product_text_completions(product_id: int, body: CompletionRequest, request: Request,
                                       caller: ProductCaller, serving: ServingDep):
        return await _completion(request, body, caller, serving, PRODUCT_DIALECT, PRODUCT_MAX_TOKENS)

    @router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES, tags=["tokens"])
    async def tokenize(body: TokenizeRequest, principal: BearerPrincipal, catalog: CatalogDep, platform: PlatformDep):
        return tokens.tokenize(catalog, body, lambda m: platform.check_model(principal, m.model_id, aliases=m.aliases))

    @router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES, tags=["tokens"])
    async def detokenize(body: DetokenizeRequest, principal: BearerPrincipal, catalog: CatalogDep, platform: PlatformDep):
        return tokens.detokenize(catalog, body, lambda m: platform.check_model(principal, m.model_id, aliases=m.aliases))

    @router.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def list_models(catalog: CatalogDep, principal: BearerPrincipal):
        return models_body(catalog, principal=principal)

    @router.get("/v1/openai/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def deepinfra_list_models(catalog: CatalogDep, principal: BearerPrincipal):
        return models_body(catalog, principal=principal)

    @product.get("/1/ai/{product_id}/openai/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def product_models(product_id: int, catalog: CatalogDep, caller: ProductCaller):
        names = list(caller.product.models) or [m.model_id for m in catalog.models]
        return models_body(catalog, [n for n in names if n in catalog], caller.principal)

    router.include_router(product)
    return router


__all__ = ["build_router", "render_error", "models_body"]
