"""The 401/403/404/200 matrix on every chat route, against a live server whose platform holds
accounts, keys, products and deployments, on SQLite and on PostgreSQL: who may call, under which
product or deployment, for which account, and who is billed in the usage row.

The cast (platform_fixtures.seed): alice, bob, carol; key `both` of alice and bob (alice first),
key `carol`; product 1 and deployment d-bob of bob, product 2 and deployment d-carol of carol.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import current_revision

from .platform_fixtures import (  # noqa: F401 - postgres_server is a fixture
    MODEL, Q, Cast, chat_call, live_app, postgres_server, run_sql, seed, usage_row,
)

FORGED = "cf-AAAAAAAA_" + "B" * 32  # well formed, never issued


@dataclass
class Closed:
    http: httpx.Client
    cast: Cast
    url: str
    engine: AsyncEngine

    def key(self, who: str | None) -> str | None:
        return {"both": self.cast.both, "carol": self.cast.carol, "junk": "sk-not-a-chatforge-key",
                "forged": FORGED, None: None}[who]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def closed(request, tmp_path_factory, api_settings, catalog):
    """A live server started on a brand-new database of each kind (a file that does not exist
    yet, an empty PostgreSQL database: its start migrates them), then seeded while it runs."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('routes') / 'platform.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    settings = api_settings.model_copy(update={"database_url": url})
    with live_app(settings, catalog) as (live, _), httpx.Client(base_url=live.url, timeout=120) as http:
        assert await current_revision(url) is not None  # the start migrated the empty database
        cast = await seed(url)
        engine = create_engine(url)
        yield Closed(http, cast, url, engine)
        await engine.dispose()


# route -> (dialect in the usage row, scope ids for bob's, carol's and a missing one)
ROUTES = {
    "openai": ("openai", None),
    "deepinfra": ("openai", None),
    "legacy": ("infomaniak", {"bob": 1, "carol": 2, "missing": 999}),
    "successor": ("infomaniak_openai", {"bob": 1, "carol": 2, "missing": 999}),
    "egp": ("egp", {"bob": "d-bob", "carol": "d-carol", "missing": "nope"}),
    "completions": ("openai", None),
}
PROMPT = Q[0]["content"]


def call(http: httpx.Client, route: str, key: str | None, account: str | None = None, scope="bob") -> httpx.Response:
    scopes = ROUTES[route][1]
    c = chat_call(route, key, account, scopes[scope] if scopes else None)
    return http.post(c.path, json=c.body, headers=c.headers)


# (key, x-selected-account-id, scope) -> status on the scoped routes (product, deployment), status
# on the unscoped ones (None: the case names a scope, so it does not apply), the account billed.
MATRIX = [
    (None, None, "bob", 401, 401, None),
    ("junk", None, "bob", 401, 401, None),
    ("forged", None, "bob", 401, 401, None),
    ("both", None, "bob", 200, 200, ("bob", "alice")),  # the owner pays; unscoped, the key's first account
    ("both", "bob", "bob", 200, 200, ("bob", "bob")),
    ("both", "alice", "bob", 403, 200, (None, "alice")),  # alice may not act under bob's product
    ("both", "carol", "bob", 403, 403, None),  # not one of the key's accounts
    ("both", "nobody", "bob", 403, 403, None),
    ("both", None, "carol", 403, None, None),  # another account's product or deployment
    ("carol", None, "carol", 200, 200, ("carol", "carol")),
    ("carol", None, "bob", 403, None, None),
    ("both", None, "missing", 404, None, None),
]


CASES = [
    pytest.param(route, who, account, scope, status, billed and billed[0 if ROUTES[route][1] else 1],
                 id=f"{route}-{who}-{account}-{scope}")
    for route in ROUTES
    for who, account, scope, scoped, unscoped, billed in MATRIX
    if (status := scoped if ROUTES[route][1] else unscoped) is not None
]


@pytest.mark.parametrize("route, who, account, scope, expected, billed", CASES)
async def test_the_matrix(closed, route, who, account, scope, expected, billed):
    dialect, scopes = ROUTES[route]
    r = call(closed.http, route, closed.key(who), account, scope)
    assert r.status_code == expected, r.text
    if expected != 200:
        return
    row = await usage_row(closed.engine, r.headers["x-request-id"])
    prefix = closed.cast.both_prefix if who == "both" else closed.cast.carol_prefix
    sid = scopes[scope] if scopes else None
    assert (row["key_prefix"], row["account"], row["dialect"], row["model"], row["status"]) == (
        prefix, billed, dialect, MODEL, "completed")
    assert (row["product_id"], row["deployment_id"]) == (
        sid if route in ("legacy", "successor") else None, sid if route == "egp" else None)


def test_refusals_in_each_envelope(closed):
    """The same refusals, each in its dialect's own error envelope."""
    r = call(closed.http, "openai", None)
    assert r.json() == {"error": {"message": "No API key provided.", "type": "authentication_error",
                                  "param": None, "code": "invalid_api_key"}}
    r = call(closed.http, "legacy", "sk-not-a-chatforge-key")
    assert r.json() == {"result": "error", "error": {"code": "not_authorized", "description": "Incorrect API key provided."}}
    assert r.headers["Deprecation"] == "true"  # the legacy route's refusals point at the successor too
    r = call(closed.http, "egp", None)
    assert r.json() == {"detail": "No API key provided.", "code": "invalid_api_key", "param": None}

    r = call(closed.http, "successor", closed.cast.both, scope="carol")
    assert r.json() == {"error": {"message": "This API key may not use product 2.", "type": "permission_error",
                                  "param": None, "code": "permission_denied"}}
    r = call(closed.http, "legacy", closed.cast.both, scope="carol")
    assert r.json() == {"result": "error", "error": {"code": "forbidden", "description": "This API key may not use product 2."}}
    r = call(closed.http, "egp", closed.cast.both, "carol")
    assert r.json() == {"detail": "This API key may not act for the selected account.", "code": "permission_denied",
                        "param": None}

    r = call(closed.http, "legacy", closed.cast.both, scope="missing")
    assert r.json() == {"result": "error", "error": {"code": "product_not_found", "description": "Product 999 does not exist."}}
    assert r.headers["Link"] == '</1/ai/999/openai/chat/completions>; rel="successor-version"'
    r = call(closed.http, "successor", closed.cast.both, scope="missing")
    assert r.json() == {"error": {"message": "Product 999 does not exist.", "type": "not_found_error",
                                  "param": "product_id", "code": "product_not_found"}}
    r = call(closed.http, "egp", closed.cast.both, scope="missing")
    assert r.json() == {"detail": "Model deployment 'nope' does not exist.", "code": "deployment_not_found",
                        "param": "model_deployment_id"}


def test_each_route_takes_only_its_own_header(closed):
    egp = closed.http.post("/v4/models/d-bob/chat-completions", json={"chat_history": [], "prompt": PROMPT},
                           headers={"Authorization": f"Bearer {closed.cast.both}"})
    assert egp.status_code == 401
    openai = closed.http.post("/v1/chat/completions", json={"model": "smollm2", "messages": Q},
                              headers={"x-api-key": closed.cast.both})
    assert openai.status_code == 401
    basic = closed.http.post("/v1/chat/completions", json={"model": "smollm2", "messages": Q},
                             headers={"Authorization": f"Basic {closed.cast.both}"})
    assert basic.status_code == 401


def test_authentication_comes_before_body_validation(closed):
    r = closed.http.post("/v1/chat/completions", json={"model": "smollm2"})
    assert r.status_code == 401
    r = closed.http.post("/v1/chat/completions", json={"model": "smollm2"}, headers={"Authorization": f"Bearer {closed.cast.both}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_listings_show_what_the_key_may_use(closed):
    both, carol = {"Authorization": f"Bearer {closed.cast.both}"}, {"Authorization": f"Bearer {closed.cast.carol}"}
    assert closed.http.get("/1/ai").status_code == 401
    assert closed.http.get("/1/ai", headers=both).json() == {
        "result": "success", "data": [{"id": 1, "name": "bob's", "models": ["smollm2"]}]}
    assert closed.http.get("/1/ai", headers=carol).json() == {
        "result": "success", "data": [{"id": 2, "name": "carol's", "models": [MODEL]}]}
    assert closed.http.get("/1/ai", headers={**both, "x-selected-account-id": "alice"}).json() == {
        "result": "success", "data": []}
    models = closed.http.get("/1/ai/1/openai/models", headers=both).json()
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    assert closed.http.get("/1/ai/2/openai/models", headers=both).status_code == 403
    assert closed.http.get("/1/ai/999/openai/models", headers=both).status_code == 404
    assert closed.http.get("/v1/models").status_code == 401
    assert [m["id"] for m in closed.http.get("/v1/models", headers=both).json()["data"]] == [MODEL, "smollm2"]
    assert closed.http.get("/1/llm/profiles").status_code == 200  # published presets: public


def test_products_and_deployments_come_from_the_database(closed):
    """A product's default model when the body names none, its models, a deployment's model."""
    both = {"Authorization": f"Bearer {closed.cast.both}"}
    r = closed.http.post("/1/llm/1", json={"messages": Q, "max_new_tokens": 1}, headers=both)
    assert r.status_code == 200 and r.json()["data"]["model"] == "smollm2"  # product 1's default, as written
    r = closed.http.post("/1/ai/1/openai/chat/completions", json={"model": "mixtral", "messages": Q}, headers=both)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_a_deployment_whose_model_is_not_served(closed):
    async def add(conn):
        await accounts.create_deployment(conn, "d-gone", "bob", "llama-70b")

    await run_sql(closed.url, add)
    r = closed.http.post("/v4/models/d-gone/chat-completions", json={"chat_history": [], "prompt": PROMPT},
                         headers={"x-api-key": closed.cast.both})
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"


async def test_a_keys_model_allow_list(closed):
    async def add(conn):
        return (await keys.create_key(conn, ["alice"], models=["some-other-model"]))[0]

    narrow = await run_sql(closed.url, add)
    r = closed.http.post("/v1/chat/completions", json={"model": "smollm2", "messages": Q, "max_tokens": 1},
                         headers={"Authorization": f"Bearer {narrow}"})
    assert r.status_code == 403
    assert r.json()["error"] == {"message": f"This API key may not use the model {MODEL!r}.", "type": "permission_error",
                                 "param": None, "code": "model_not_allowed"}
    for path, body in [("/tokenize", {"prompt": "Hi"}), ("/detokenize", {"tokens": [1]})]:
        r = closed.http.post(path, json=body, headers={"Authorization": f"Bearer {narrow}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", path
    # the allow-list is checked before the prompt is rendered or tokenized: a prompt longer than the
    # context, which tokenizing would refuse, is refused for the model instead
    context = closed.http.get("/v1/models", headers={"Authorization": f"Bearer {closed.cast.both}"}).json()["data"][0]
    too_long = [{"role": "user", "content": "hello " * (context["context_length"] + 100)}]
    r = closed.http.post("/v1/chat/completions", json={"model": "smollm2", "messages": too_long},
                         headers={"Authorization": f"Bearer {closed.cast.both}"})
    assert r.status_code == 400, r.text  # the key that may use the model: tokenized, too long
    r = closed.http.post("/v1/chat/completions", json={"model": "smollm2", "messages": too_long},
                         headers={"Authorization": f"Bearer {narrow}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


async def test_model_lists_show_only_the_models_a_key_may_use(closed):
    async def add(conn):
        return [(await keys.create_key(conn, ["bob"], models=models))[0] for models in (["some-other-model"], ["smollm2"], [MODEL])]

    none, by_alias, by_id = await run_sql(closed.url, add)
    for path in ["/v1/models", "/v1/openai/models", "/1/ai/1/openai/models"]:
        listed = {who: [m["id"] for m in closed.http.get(path, headers={"Authorization": f"Bearer {key}"}).json()["data"]]
                  for who, key in [("none", none), ("by_alias", by_alias), ("by_id", by_id), ("all", closed.cast.both)]}
        assert listed["none"] == [], path
        # a model allowed by its id or an alias is listed under each name it answers to (product 1 offers smollm2)
        everything = [MODEL, "smollm2"] if path.startswith("/v1") else ["smollm2"]
        assert listed["by_alias"] == listed["by_id"] == listed["all"] == everything, path
    # the product listing too: each product the key's accounts own, with the models the key may use
    products = {who: closed.http.get("/1/ai", headers={"Authorization": f"Bearer {key}"}).json()["data"]
                for who, key in [("none", none), ("by_alias", by_alias), ("by_id", by_id)]}
    assert products["none"] == [{"id": 1, "name": "bob's", "models": []}]
    assert products["by_alias"] == products["by_id"] == [{"id": 1, "name": "bob's", "models": ["smollm2"]}]


def test_token_counting_takes_a_key_too(closed):
    for path, body in [("/tokenize", {"prompt": "Hi"}), ("/detokenize", {"tokens": [1]})]:
        assert closed.http.post(path, json=body).status_code == 401
        r = closed.http.post(path, json=body, headers={"Authorization": f"Bearer {closed.cast.carol}"})
        assert r.status_code == 200, r.text


async def test_a_revoked_key_is_refused_at_once(closed):
    async def add(conn):
        return await keys.create_key(conn, ["carol"])

    secret, key = await run_sql(closed.url, add)
    assert call(closed.http, "openai", secret).status_code == 200
    await run_sql(closed.url, lambda conn: keys.revoke_key(conn, key.prefix))
    r = call(closed.http, "openai", secret)
    assert r.status_code == 401 and r.json()["error"]["message"] == "This API key is revoked."
