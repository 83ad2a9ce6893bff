"""OpenAI / DeepInfra routes. Handlers hold no logic: translate -> service -> translate."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatforge.api.deps import BearerCaller, BearerPrincipal, Caller
from chatforge.api.errors import KIND, ApiError, dialect_route_class, stream_failure
from chatforge.api.openai import translate
from chatforge.api.openai.schemas import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList
from chatforge.api.serving import Serving
from chatforge.api.sse import sse_data, sse_response
from chatforge.service.catalog import ModelCatalog

DIALECT = "openai"


def render_error(err: ApiError) -> JSONResponse:
    return JSONResponse(
        translate.error_body(err.message, err.kind, err.code, err.param), status_code=err.status, headers=err.headers
    )


ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)}
CHAT_RESPONSES = {
    200: {"model": ChatCompletion, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **ERROR_RESPONSES,
}


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


async def serve_chat(request: Request, body: ChatCompletionRequest, caller: Caller, dialect: str = DIALECT,
                     max_tokens_cap: int | None = None):
    """The chat handler, shared with routes that speak this dialect under another path."""
    serving: Serving = request.app.state.serving
    catalog: ModelCatalog = request.app.state.catalog
    completion_id = new_completion_id()
    req = translate.to_internal(body, completion_id, max_tokens_cap=max_tokens_cap)
    ticket = await serving.admit(dialect, req, caller)
    prep = ticket.prep
    model_name = body.model if body.model in catalog else prep.model.model_id
    if not body.stream:
        result = await serving.complete(request, ticket)
        return JSONResponse(translate.to_response(result, completion_id, model_name), headers=ticket.headers)
    events = await serving.open_stream(ticket)
    options = body.stream_options
    writer = translate.ChunkWriter(
        completion_id, model_name, prep.created, body.n,
        include_usage=bool(options and options.include_usage),
        continuous_usage=bool(options and options.continuous_usage_stats),
    )

    async def frames():
        # The status line is sent: a failure from here on becomes an `error` object in the
        # stream (as vLLM and OpenAI send it; the openai client raises APIError on it).
        try:
            async for event in events:
                for chunk in writer.chunks(event, prep.usage()):
                    yield sse_data(chunk)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the client
            err = stream_failure(exc)
            yield sse_data(translate.error_body(err.message, KIND.get(err.status, "server_error"), err.code, err.param))
        yield sse_data("[DONE]")

    return sse_response(frames(), headers=ticket.headers)


def models_body(catalog: ModelCatalog) -> dict:
    """One card per name a request may use: each model's id, then its aliases (`root` is the
    model's id, as vLLM writes it for served names)."""
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
            for m in catalog.models
            for name in (m.model_id, *m.aliases)
        ],
    }


def build_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route_class(render_error), tags=["openai"])

    @router.post("/v1/chat/completions", responses=CHAT_RESPONSES, response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request, caller: BearerCaller):
        return await serve_chat(request, body, caller)

    @router.post("/v1/openai/chat/completions", responses=CHAT_RESPONSES, response_model=None)
    async def deepinfra_chat_completions(body: ChatCompletionRequest, request: Request, caller: BearerCaller):
        return await serve_chat(request, body, caller)

    @router.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def list_models(request: Request, _: BearerPrincipal):
        return models_body(request.app.state.catalog)

    @router.get("/v1/openai/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def deepinfra_list_models(request: Request, _: BearerPrincipal):
        return models_body(request.app.state.catalog)

    return router


__all__ = ["build_router", "serve_chat", "render_error", "models_body"]
