"""`/playground` and `/dashboard`: two static pages served from the package, with their scripts
and styles under `/playground/static/`. Nothing is built and nothing is fetched from elsewhere:
the pages call the server's own API (the dialects, `/v1/usage`), and the Content-Security-Policy
says so to the browser."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml"}
# Everything from this origin, nothing from anywhere else; no inline scripts.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = {p.name: p for p in STATIC.iterdir() if p.suffix in MEDIA_TYPES}

    @router.get("/playground")
    async def playground():
        return _file(STATIC / "playground.html")

    @router.get("/dashboard")
    async def dashboard():
        return _file(STATIC / "dashboard.html")

    @router.get("/playground/static/{name}")
    async def asset(name: str):
        if name not in assets:  # only the package's own files, by name: no path ever reaches the disk
            raise HTTPException(404, "no such file")
        return _file(assets[name])

    return router
