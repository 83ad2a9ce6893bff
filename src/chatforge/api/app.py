"""create_app: the HTTP server around one catalog of models and the platform (keys, limits,
usage), started and closed with the app. State hangs off `app.state`: the catalog, metrics, the
drain (api/drain.py, which api/server.py starts on a signal), the request limits, the engine
watchdog, and once started the platform and the serving template. CORS is off unless
`server.cors_allow_origins` names origins."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from chatforge.api import node, ops, usage
from chatforge.api.drain import Drain
from chatforge.api.errors import ApiError, count_answer
from chatforge.api.egp import router as egp_router
from chatforge.api.infomaniak import router as infomaniak_router
from chatforge.api.limits import RequestLimits
from chatforge.api.metrics import Metrics
from chatforge.api.openai import router as openai_router
from chatforge.api.playground import router as playground_router
from chatforge.api.request_ids import RequestIds
from chatforge.api.serving import Serving, Timeouts
from chatforge.api.watchdog import EngineWatchdog
from chatforge.platform.gate import Platform, is_loopback_host
from chatforge.service.catalog import ModelCatalog
from chatforge.service.chat import ChatService
from chatforge.settings import Settings
from chatforge.upstream.node import NodeServing
from chatforge.upstream.remote_engine import remote_engines

log = logging.getLogger("chatforge.api")


def create_app(settings: Settings, catalog: ModelCatalog | None = None) -> FastAPI:
    """An app serving `catalog`; without one, the models named in `settings` are loaded at
    start-up and their engines stopped at shutdown (an injected catalog belongs to the caller)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = catalog is None
        if owned:
            from chatforge.service.loading import load_catalog

            _install(app, await asyncio.to_thread(load_catalog, settings))
        try:
            async with _platform(settings) as platform, remote_engines(app.state.catalog):
                app.state.platform = platform
                app.state.serving = serving = Serving(
                    ChatService(app.state.catalog), app.state.metrics, platform,
                    limits=app.state.limits, timeouts=_timeouts(settings), drain=app.state.drain,
                )
                app.state.watchdog = watchdog = EngineWatchdog(app.state.catalog, settings.server.engine_step_timeout_s)
                app.state.metrics.watch(platform, watchdog)
                watchdog.start()
                try:
                    yield
                finally:
                    await watchdog.stop()
                    await serving.settled()  # before the limiter closes
        finally:
            if owned:
                for m in app.state.catalog.models:
                    await asyncio.to_thread(m.engine.shutdown, 0.0)

    # /docs and /redoc from the assets fastapi-offline ships, not from a CDN: a self-hosted machine
    # may have no way out, and FastAPI's pages are blank without their scripts.
    app = FastAPIOffline(title="chatforge", version="0.1.0", lifespan=lifespan, static_url="/docs-assets")
    app.state.settings = settings
    app.state.drain = Drain()
    app.state.limits = RequestLimits.of(settings.limits)
    if catalog is not None:
        _install(app, catalog)
    _middleware(app, settings)
    app.include_router(openai_router.build_router())
    if settings.role == "node":  # the gateways' token-level routes; the callers' pages are the gateways'
        app.include_router(node.build_router())
    else:
        app.include_router(infomaniak_router.build_router())
        app.include_router(egp_router.build_router())
        app.include_router(usage.build_router())
        app.include_router(playground_router.build_router())
    app.include_router(ops.build_router())
    app.add_exception_handler(HTTPException, _no_route)
    app.openapi = lambda: _openapi(app)
    return app


async def _no_route(request: Request, exc: HTTPException):
    """A path no route serves, or a method it does not take (404, 405): in the envelope of the
    dialect whose paths it is under, as every other error there, and counted as its answer (under
    the dialect's label, never the path: any path may be asked for)."""
    path = request.url.path
    owner = _dialect_of(path)
    if owner is None:
        return await http_exception_handler(request, exc)
    dialect, render = owner
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
    message = f"{exc.detail}: {request.method} {path}"
    response = render(ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})))
    count_answer(request, dialect, exc.status_code)
    return response


def _dialect_of(path: str) -> tuple[str, Callable[[ApiError], Response]] | None:
    """The metrics label and error renderer of the dialect owning `path` by its first segment
    (`/v4` EGP; `/1` Infomaniak, but its successor `/1/ai/{id}/openai/...` speaks OpenAI; `/v1`,
    `/tokenize`, `/detokenize` OpenAI), the prefix alone included; None for a path outside them."""
    first = path.strip("/").split("/", 1)[0]
    if first == "v4":
        return egp_router.DIALECT, egp_router.render_error
    if first == "1":
        if "/openai/" in path:
            return openai_router.PRODUCT_DIALECT, openai_router.render_error
        return infomaniak_router.DIALECT, infomaniak_router.render_error
    if first in ("v1", "tokenize", "detokenize"):
        return openai_router.DIALECT, openai_router.render_error
    return None


def _openapi(app: FastAPI) -> dict:
    """FastAPI documents request validation failures as 422; every dialect answers them with
    400 in its own envelope, so the schema says 400. A body over the size bound is 413, in the
    same envelope."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                invalid = responses.pop("422", None)
                if invalid is not None and "400" not in responses:
                    responses["400"] = {"description": "Invalid request"}
                if "requestBody" in operation and "413" not in responses:  # api/limits.py
                    responses["413"] = {**responses.get("400", {}), "description": "Request body too large"}
        app.openapi_schema = schema
    return app.openapi_schema


def _timeouts(settings: Settings) -> Timeouts:
    return Timeouts(request_s=settings.limits.request_timeout_s, queue_s=settings.limits.queue_timeout_s,
                    stall_s=settings.server.stream_stall_timeout_s)


# What a browser page may read of a response when CORS allows its origin.
_EXPOSED_HEADERS = ["x-request-id", "retry-after", "deprecation", "link"] + [
    f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")]


def _middleware(app: FastAPI, settings: Settings) -> None:
    """Request ids outermost (every response and log line has one); CORS only when configured."""
    origins = settings.server.cors_allow_origins
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"],
                           expose_headers=_EXPOSED_HEADERS, max_age=600)
    app.add_middleware(RequestIds)


def _install(app: FastAPI, catalog: ModelCatalog) -> None:
    app.state.catalog = catalog
    app.state.metrics = Metrics(catalog)
    app.state.node = NodeServing(catalog, app.state.drain)


@asynccontextmanager
async def _platform(settings: Settings):
    """The started platform: database migrated, rate limiter connected (a wrong Redis URL stops
    the start here), usage writer running."""
    platform = Platform(settings.database_url, settings.redis_url, products=settings.products,
                        deployments=settings.deployments, usage_buffer_rows=settings.storage.usage_buffer_rows,
                        usage_linger_s=settings.storage.usage_linger_s,
                        redis_unavailable=settings.storage.redis_unavailable, key_cache_s=settings.key_cache_s)
    await platform.start()
    try:
        if await platform.open_mode(is_loopback_host(settings.host), settings.allow_open_remote):
            log.warning("open mode: no API key exists, so requests need none; the first key created ends it")
        yield platform
    finally:
        # Rows still buffered wait for the database as long as a drain would; then they are counted lost.
        await platform.close(flush_timeout_s=settings.server.drain_timeout_s)
