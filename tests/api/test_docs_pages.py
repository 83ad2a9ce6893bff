"""/docs (Swagger UI) and /redoc work on a machine with no way out: every script, style sheet
and icon they load is served by chatforge itself, and the Swagger UI served reads OpenAPI 3.1
(what /openapi.json is)."""

from __future__ import annotations

import re

import pytest

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:_url|url)\s*:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page, needs", [
    ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
    ("/redoc", ("redoc.standalone.js",)),
])
def test_the_docs_pages_load_nothing_from_another_host(http, page, needs):
    r = http.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.I), \
        [m.group(0) for m in re.finditer(r"(?:https?:)?//[^\s\"')]+", r.text)]
    assets = [a or b for a, b in ASSET.findall(r.text)]
    for name in needs:
        assert any(a.endswith(name) for a in assets), (name, assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        served = http.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset
    if page == "/docs":
        bundle = next(a for a in assets if a.endswith("swagger-ui-bundle.js"))
        # Swagger UI reads OpenAPI 3.1 from its version 5 on; 4.x shows an error instead of the API
        (major,) = re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', http.get(bundle).text)
        assert http.get("/openapi.json").json()["openapi"].startswith("3.1") and int(major) >= 5, major
