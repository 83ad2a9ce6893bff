"""The Infomaniak legacy page's own example, sent exactly as written (no token cap), to the
page's own product id.

Without `max_new_tokens` an answer may run to the end of the context, so this module serves the
bundled model with a 128-token context: the request finishes in seconds, and the test also
shows the default (the rest of the context)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.service.loading import load_catalog

from .conftest import LiveServer

CONTEXT = 128
PAGE_BODY = b"""{
    "messages": [
        {
            "content": "Write a letter to your future self",
            "role": "user"
        }
    ]
}"""


@pytest.fixture(scope="module")
def small(api_settings):
    engine = dataclasses.replace(api_settings.engine, max_model_len=CONTEXT, kv_cache_mb=16, max_num_seqs=4)
    settings = api_settings.model_copy(update={"engine": engine})
    catalog = load_catalog(settings)
    try:
        with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
            yield http
    finally:
        for m in catalog.models:
            m.engine.shutdown(0)


def test_the_page_example_as_written(small):
    r = small.post("/1/llm/10775", content=PAGE_BODY,
                   headers={"Authorization": "Bearer YOUR-TOKEN-HERE", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == "success" and set(body) == {"result", "data"}
    data = body["data"]
    assert set(data) == {"model", "created", "choices", "usage"}
    (choice,) = data["choices"]
    assert set(choice) == {"index", "message", "finish_reason"}
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    u = data["usage"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    # max_new_tokens defaults to the rest of the context
    if choice["finish_reason"] == "length":
        assert u["total_tokens"] == CONTEXT
    else:
        assert choice["finish_reason"] == "eos_token" and u["total_tokens"] < CONTEXT
