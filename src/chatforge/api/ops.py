"""Operations endpoints: liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from chatforge.api.deps import CatalogDep, MetricsDep


def build_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", responses={503: {"description": "an engine loop has stopped"}})
    async def health(catalog: CatalogDep):
        dead = [m.model_id for m in catalog.models if not m.engine.is_running]
        if dead:
            return JSONResponse({"status": "unhealthy", "dead_engines": dead}, status_code=503)
        return {"status": "ok", "models": [m.model_id for m in catalog.models]}

    @router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics(metrics: MetricsDep):
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
