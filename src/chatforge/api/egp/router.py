"""Scale EGP v4 route. Handlers hold no logic: deployment -> translate -> service -> translate.

Streams follow Scale's SDK: every SSE `data:` is a whole response object, an error after the
stream has begun arrives as `event: error`, and there is no `[DONE]` (the SDK would try to
parse it as a response)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from chatforge.api.egp import translate
from chatforge.api.egp.schemas import ChatCompletionRequest, CompletionResponse, ErrorResponse
from chatforge.api.errors import ApiError, dialect_route_class
from chatforge.api.serving import Serving
from chatforge.api.sse import sse_data, sse_event, sse_response
from chatforge.platform.gate import is_loopback_host
from chatforge.service.errors import ChatError
from chatforge.service.protocol import ChatEvent
from chatforge.settings import Settings

log = logging.getLogger("chatforge.api.egp")

DIALECT = "egp"


class DeploymentNotFoundError(ChatError):
    status = 404
    code = "deployment_not_found"


def resolve_deployment(settings: Settings, deployment_id: str) -> str | None:
    """The model behind a deployment (None: the server's default). A configured deployment
    names its model; in open mode (no keys, loopback) any id runs the default model.
    NOTE: the platform round replaces this with its database lookup."""
    config = settings.deployments.get(deployment_id)
    if config is not None:
        return config.model
    if is_loopback_host(settings.host) or settings.allow_open_remote:
        return None
    raise DeploymentNotFoundError(f"Model deployment {deployment_id!r} does not exist.", param="model_deployment_id")


def render_error(err: ApiError) -> JSONResponse:
    return JSONResponse(translate.error_body(err.code, err.message, err.param), status_code=err.status, headers=err.headers)


class StreamFailedError(ChatError):
    """An unexpected failure after the stream began, as the client sees it (details in the log)."""

    status = 500
    code = "internal_error"


async def frames(events: AsyncIterator[ChatEvent], writer: translate.StreamWriter) -> AsyncIterator[bytes]:
    """SSE bytes for a stream that has begun: its status line is sent, so a failure becomes an
    `event: error` carrying the error body, and the stream ends there."""
    try:
        async for event in events:
            for obj in writer.objects(event):
                yield sse_data(obj)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an event
        if not isinstance(exc, ChatError):
            log.exception("stream failed")
            exc = StreamFailedError("internal server error")
        yield sse_event("error", translate.error_body(exc.code, exc.message, exc.param))


RESPONSES = {
    200: {"model": CompletionResponse, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **{code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503)},
}
# Documented here; checked by the platform's guard once keys exist (until then: open mode).
ApiKey = Annotated[str | None, Header(alias="x-api-key", description="required once keys exist")]
SelectedAccount = Annotated[str | None, Header(alias="x-selected-account-id", description="which of the key's accounts pays")]


def build_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route_class(render_error), tags=["egp"])

    @router.post("/v4/models/{model_deployment_id}/chat-completions", responses=RESPONSES, response_model=None)
    async def chat_completions(model_deployment_id: str, body: ChatCompletionRequest, request: Request,
                               x_api_key: ApiKey = None, x_selected_account_id: SelectedAccount = None):
        serving: Serving = request.app.state.serving
        model = resolve_deployment(request.app.state.settings, model_deployment_id)
        prep = serving.prepare(DIALECT, translate.to_internal(body, "egp-" + secrets.token_hex(12), model))
        if not body.stream:
            result = await serving.complete(request, DIALECT, prep)
            return JSONResponse(translate.to_response(result, body.prompt))
        events = await serving.open_stream(DIALECT, prep)
        return sse_response(frames(events, translate.StreamWriter(body.prompt, body.logprobs)))

    return router


__all__ = ["build_router", "resolve_deployment", "frames"]
