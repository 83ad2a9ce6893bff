"""`GET /v1/usage`, `GET /v1/usage/requests/{id}` and `GET /v4/model-deployments` on a live server
with keys: each caller sees its own accounts' usage and deployments, refusals included, and bad
queries are 400 in OpenAI's envelope.

The cast (platform_fixtures.seed): key `both` of alice and bob (here limited to 2 requests a
minute), key `carol`; product 1 and deployment d-bob of bob, product 2 and deployment d-carol of
carol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from scale_gp import SGPClient

from chatforge.platform.db import create_engine

from .conftest import PRICE_IN, PRICE_OUT
from .platform_fixtures import MODEL, Cast, bearer, chat_call, egp_headers, live_app, seed, usage_rows


@dataclass
class Served:
    http: httpx.Client
    cast: Cast
    ids: dict[str, str]  # what each call was answered with: its x-request-id
    rows: list[dict]  # the usage rows after the calls


@pytest.fixture(scope="module")
async def served(tmp_path_factory, api_settings, catalog):
    url = f"sqlite:///{tmp_path_factory.mktemp('usage-api') / 'platform.db'}"
    cast = await seed(url, rpm=2)
    settings = api_settings.model_copy(update={"database_url": url})
    with live_app(settings, catalog) as (live, _), httpx.Client(base_url=live.url, timeout=120) as http:
        calls = {
            "alice": chat_call("openai", cast.both, max_tokens=2),  # the key's first account pays
            "bob": chat_call("legacy", cast.both, scope=1, max_tokens=2),  # product 1's owner pays
            "refused": chat_call("openai", cast.both, max_tokens=2),  # the key's third request this minute
            "carol-egp": chat_call("egp", cast.carol, scope="d-carol", max_tokens=2),
            "carol-product": chat_call("successor", cast.carol, scope=2, max_tokens=2),
        }
        ids = {}
        for name, c in calls.items():
            r = http.post(c.path, json=c.body, headers=c.headers)
            assert r.status_code == (429 if name == "refused" else 200), r.text
            ids[name] = r.headers["x-request-id"]
        engine = create_engine(url)
        try:
            http.get("/v1/usage", headers=bearer(cast.carol))  # the usage routes write what is queued first
            rows = await usage_rows(engine)
        finally:
            await engine.dispose()
        yield Served(http, cast, ids, rows)


def window() -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"since": (now - timedelta(hours=1)).isoformat(), "until": (now + timedelta(minutes=1)).isoformat(),
            "bucket": "minute"}


def usage(served: Served, key: str, account: str | None = None, **query) -> dict:
    r = served.http.get("/v1/usage", params={**window(), **query}, headers=bearer(key, account))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_key_sees_its_accounts_rows_refusals_apart(served):
    report = usage(served, served.cast.both, by="account")
    totals = {g["group"]: (g["requests"], g["rate_limited"]) for g in report["groups"]}
    assert totals == {"alice": (1, 1), "bob": (1, 0)}
    rows = {r["request_id"]: r for r in served.rows}
    for group in report["groups"]:
        mine = [rows[served.ids[n]] for n in ("alice", "bob") if n == group["group"]]
        assert group["prompt_tokens"] == sum(r["prompt_tokens"] for r in mine)
        assert group["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
        assert group["estimated_cost"] == pytest.approx(
            sum(r["prompt_tokens"] * PRICE_IN + r["completion_tokens"] * PRICE_OUT for r in mine) / 1e6)
        assert group["latency_s"]["count"] == 1
    # the series holds the same rows, in the current minute's bucket (or the one before)
    assert sum(b["requests"] for b in report["series"]) == 2 and sum(b["rate_limited"] for b in report["series"]) == 1
    assert report["latency_s"]["count"] == 2 and report["bucket_seconds"] == 60
    assert sum(point["count"] for point in report["latency"]) == 2

    assert [g["group"] for g in usage(served, served.cast.both, "bob", by="account")["groups"]] == ["bob"]
    carol = usage(served, served.cast.carol, by="deployment")
    assert {g["group"]: g["requests"] for g in carol["groups"]} == {"d-carol": 1, None: 1}
    assert [g["group"] for g in usage(served, served.cast.carol, by="key")["groups"]] == [served.cast.carol_prefix]
    assert [g["group"] for g in usage(served, served.cast.carol, by="model")["groups"]] == [MODEL]


def test_a_requests_row_is_read_by_its_accounts_only(served):
    http, cast = served.http, served.cast
    row = http.get(f"/v1/usage/requests/{served.ids['bob']}", headers=bearer(cast.both)).json()
    assert (row["model"], row["dialect"], row["status"], row["product_id"]) == (MODEL, "infomaniak", "completed", 1)
    refused = http.get(f"/v1/usage/requests/{served.ids['refused']}", headers=bearer(cast.both)).json()
    assert (refused["status"], refused["prompt_tokens"], refused["completion_tokens"], refused["estimated_cost"]) == (
        "rate_limited", 0, 0, 0.0)
    hidden = http.get(f"/v1/usage/requests/{served.ids['carol-egp']}", headers=bearer(cast.both))
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "usage_not_found"


@pytest.mark.parametrize("query, message", [
    ({"bucket": "week"}, "bucket: Input should be 'minute', 'hour' or 'day'"),
    ({"by": "dialect"}, "by: Input should be 'key', 'account', 'model', 'product' or 'deployment'"),
    ({"since": "2030-01-01T00:00:00"}, "'since' needs a timezone"),
    ({"until": "0.5"}, "'until' is an ISO time with a zone"),  # not a Unix time
    ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "'since' must come before 'until'"),
    ({"since": "2030-01-01T00:00:00Z", "until": "2030-03-01T00:00:00Z", "bucket": "minute"}, "more than 1500 minute buckets"),
])
def test_bad_queries_are_400_in_openais_envelope(served, query, message):
    r = served.http.get("/v1/usage", params=query, headers=bearer(served.cast.carol))
    assert r.status_code == 400
    assert message in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"


def test_without_a_key_there_is_no_usage(served):
    r = served.http.get("/v1/usage")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_deployments_are_listed_for_the_keys_accounts(served):
    http, cast = served.http, served.cast
    items = http.get("/v4/model-deployments", headers=egp_headers(cast.carol)).json()
    assert items == {"items": [{"id": "d-carol", "name": "d-carol", "account_id": "carol", "model_instance_id": MODEL,
                                "status": "READY"}], "current_page": 1, "items_per_page": 100, "total_item_count": 1}
    assert [i["id"] for i in http.get("/v4/model-deployments", headers=egp_headers(cast.both)).json()["items"]] == ["d-bob"]
    assert http.get("/v4/model-deployments", headers=egp_headers(cast.both, "alice")).json()["items"] == []
    refused = http.get("/v4/model-deployments")
    assert refused.status_code == 401 and set(refused.json()) == {"detail", "code", "param"}
    # Scale's own SDK reads the list
    client = SGPClient(api_key=cast.both, base_url=str(http.base_url))
    assert [(d.id, d.account_id, d.model_instance_id) for d in client.models.deployments.list_all()] == [
        ("d-bob", "bob", "smollm2")]
