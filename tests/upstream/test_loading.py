"""Which models a process loads: a gateway none (their tokenizer, template, context length and
price only), a node all of them whatever their upstreams say, an all-in-one server the ones
without upstreams, its KV budget shared among those alone."""

from __future__ import annotations

from chatforge.service.loading import engine_configs, load_catalog
from chatforge.settings import load_settings
from chatforge.upstream.loading import load_gateway_catalog
from chatforge.upstream.remote_engine import RemoteEngine

REMOTE = {"path": "smollm2", "id": "far-smollm2", "upstreams": [{"url": "http://10.0.0.1:8001"}]}


def test_a_gateway_loads_no_weights_and_keeps_names_prices_and_context():
    settings = load_settings(role="gateway", models=[REMOTE], prices={"far-smollm2": {"input": 1.0, "output": 2.0}},
                             engine={"max_model_len": 4096})
    catalog = load_gateway_catalog(settings)
    (model,) = catalog.models
    assert isinstance(model.engine, RemoteEngine) and [u.url for u in model.engine.upstreams] == ["http://10.0.0.1:8001"]
    assert model.model_id == "far-smollm2" and "smollm2" in model.aliases  # a packaged model keeps its names
    assert model.context_length == 4096 and model.price.output == 2.0
    assert model.template is not None and model.tokenizer.encode("Hello") and model.structured.vocab_size >= 49152
    assert load_catalog(settings).models[0].engine.upstreams[0].url == "http://10.0.0.1:8001"  # the same path


def test_an_all_in_one_server_shares_its_kv_budget_among_its_local_models_only():
    local = {"path": "smollm2", "id": "near-smollm2"}
    both = load_settings(models=[local, REMOTE], engine={"kv_cache_mb": 64})
    alone = load_settings(models=[local], engine={"kv_cache_mb": 64})
    shared = [c.kv_cache_mb for c in engine_configs(both)]
    assert shared == [c.kv_cache_mb for c in engine_configs(alone)] and len(shared) == 1 and shared[0] >= 60
    assert engine_configs(load_settings(models=[REMOTE])) == []
    node = load_settings(role="node", models=[local, REMOTE], engine={"kv_cache_mb": 64})
    assert len(engine_configs(node)) == 2  # a node serves every model it is given
