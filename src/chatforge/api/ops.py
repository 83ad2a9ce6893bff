"""Operations endpoints: health and Prometheus metrics.

`/health` is 200 while every engine loop runs and steps within the watchdog's limit, 503
`unhealthy` otherwise, and 503 `draining` once a shutdown began (so a load balancer stops
sending). The database's and Redis's state is reported but does not fail it: every gateway
shares them, and a request meanwhile gets its own 503."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from chatforge.api.deps import CatalogDep, MetricsDep


def build_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", responses={503: {"description": "draining, or an engine loop has stopped or stalled"}})
    async def health(request: Request, catalog: CatalogDep):
        state = request.app.state
        body = {"status": "ok", "models": [m.model_id for m in catalog.models], **_stores(state)}
        dead = [m.model_id for m in catalog.models if not m.engine.is_running]
        watchdog = getattr(state, "watchdog", None)
        stalled = sorted(watchdog.stalled) if watchdog is not None else []
        if dead or stalled:
            return JSONResponse({**body, "status": "unhealthy", "dead_engines": dead, "stalled_engines": stalled},
                                status_code=503)
        drain = getattr(state, "drain", None)
        if drain is not None and drain.draining:
            return JSONResponse({**body, "status": "draining", "in_flight": drain.in_flight}, status_code=503)
        return body

    @router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics(metrics: MetricsDep):
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _stores(state) -> dict[str, str]:
    platform = getattr(state, "platform", None)
    if platform is None:
        return {}
    stores = {"database": "up" if platform.database_health.up else "unavailable"}
    if platform.redis_url:
        stores["redis"] = "up" if platform.redis_health.up else "unavailable"
    return stores
