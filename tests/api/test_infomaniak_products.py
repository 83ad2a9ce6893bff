"""Infomaniak products: the successor route driven by the official `openai` client, the product
listings, and how a product id resolves to a model in open mode (configured products; any id).

A second live server shares the session's catalog (one model loaded, two apps): it is configured
with products. The database's products, with keys, are tested in test_platform_routes.py."""

from __future__ import annotations

import httpx
import openai
import pytest

from chatforge.api.app import create_app
from chatforge.platform.scopes import ProductScope
from chatforge.settings import load_settings

from .conftest import LiveServer

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
Q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
PRODUCTS = {
    10775: {"name": "demo", "model": "smollm2"},
    42: {"name": "listed", "models": [MODEL]},
    7: {"name": "nothing-served", "model": "mixtral"},
}


@pytest.fixture(scope="module")
def configured(api_settings, catalog):
    """A server in open mode with configured products."""
    settings = api_settings.model_copy(update={"products": load_settings(products=PRODUCTS).products})
    with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/1/ai/10775/openai", api_key="unused", max_retries=0) as c:
        yield c


# -- resolution ---------------------------------------------------------------------------------
def test_toml_product_and_deployment_tables(tmp_path):
    path = tmp_path / "chatforge.toml"
    path.write_text('[products.10775]\nname = "demo"\nmodel = "smollm2"\n\n[products.42]\nmodels = ["a", "b"]\n\n'
                    '[deployments.my-dep]\nmodel = "smollm2"\n\n[deployments.bare]\n')
    s = load_settings(path)
    assert set(s.products) == {10775, 42}
    assert (s.products[10775].name, s.products[10775].model, s.products[10775].models) == ("demo", "smollm2", [])
    assert (s.products[42].model, s.products[42].models) == (None, ["a", "b"])
    assert s.deployments["my-dep"].model == "smollm2" and s.deployments["bare"].model is None


def test_resolution_of_configured_and_open_ids():
    s = load_settings(products={"10775": {"name": "demo", "model": "smollm2"}, "42": {"models": ["a", "b"]}})

    def configured_product(s, product_id):
        return ProductScope.configured(product_id, s.products.get(product_id))

    assert configured_product(s, 10775) == ProductScope(10775, "demo", ("smollm2",), "smollm2")
    assert configured_product(s, 42) == ProductScope(42, "", ("a", "b"), "a")
    assert configured_product(s, 555) == ProductScope(555, "", (), None)  # any other id: the server's models


# -- the successor route with the openai client --------------------------------------------------
def test_openai_client_on_the_successor_route(client):
    r = client.chat.completions.create(model=MODEL, messages=Q, temperature=0, max_tokens=10)
    assert r.object == "chat.completion" and r.model == MODEL
    assert "Paris" in r.choices[0].message.content
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_client_streams_on_the_successor_route(client):
    kw = dict(model="smollm2", messages=Q, temperature=0, max_tokens=10)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens > 0


def test_successor_max_tokens_bound_is_5000(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=Q, max_tokens=5001)
    assert e.value.body["param"] == "max_tokens" and "5000" in e.value.message
    r = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=5000, stop=["."], temperature=0)
    assert r.choices[0].finish_reason == "stop"


def test_successor_models_list(client, catalog):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["context_length"] == catalog.get(None).context_length


def test_successor_metrics_label(server, client):
    client.chat.completions.create(model=MODEL, messages=Q, max_tokens=1)
    text = httpx.get(server.url + "/metrics").text
    assert f'chatforge_requests_total{{dialect="infomaniak_openai",model="{MODEL}",status="200"}}' in text


# -- a server with configured products -----------------------------------------------------------
def test_products_are_listed(configured):
    r = configured.get("/1/ai")
    assert r.status_code == 200
    assert r.json() == {"result": "success", "data": [
        {"id": 7, "name": "nothing-served", "models": ["mixtral"]},
        {"id": 42, "name": "listed", "models": [MODEL]},
        {"id": 10775, "name": "demo", "models": ["smollm2"]},
    ]}


def test_product_models_use_the_configured_names(configured, catalog):
    r = configured.get("/1/ai/10775/openai/models").json()
    assert [m["id"] for m in r["data"]] == ["smollm2"]
    assert r["data"][0]["context_length"] == catalog.get(None).context_length
    assert configured.get("/1/ai/7/openai/models").json() == {"object": "list", "data": []}


def test_legacy_runs_the_products_default_model(configured):
    r = configured.post("/1/llm/10775", json={"messages": Q, "max_new_tokens": 2})
    assert r.status_code == 200 and r.json()["data"]["model"] == "smollm2"
    r = configured.post("/1/llm/42", json={"messages": Q, "max_new_tokens": 2})
    assert r.status_code == 200 and r.json()["data"]["model"] == MODEL


def test_a_model_outside_the_product_is_refused(configured):
    # Product 42 offers the model under its id only; the alias names the same model, so it is allowed.
    ok = configured.post("/1/ai/42/openai/chat/completions", json={"model": "smollm2", "messages": Q, "max_tokens": 1})
    assert ok.status_code == 200
    r = configured.post("/1/llm/7", json={"messages": Q})  # the product's default is not served here
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = configured.post("/1/ai/7/openai/chat/completions", json={"model": MODEL, "messages": Q})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "not offered by product 7" in r.json()["error"]["message"]


def test_open_server_accepts_any_product_id(http):
    for pid in (1, 10775, 987654):
        r = http.post(f"/1/llm/{pid}", json={"messages": Q, "max_new_tokens": 1})
        assert r.status_code == 200 and r.json()["data"]["model"] == MODEL
    assert http.get("/1/ai").json() == {"result": "success", "data": []}
