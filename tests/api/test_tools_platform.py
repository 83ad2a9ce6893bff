"""A request whose tools or output format cannot be served is refused before the platform admits
it: no rate-limit reservation is taken, no usage row written, on a key with a request limit."""

from __future__ import annotations

from chatforge.platform.db import create_engine

from .platform_fixtures import chat_call, usage_rows
from .test_platform_limits import db, fire, make_key, server_at  # noqa: F401 - server_at is a fixture

UNIQUE = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}


async def test_refused_constraints_take_no_reservation_and_write_no_usage(tmp_path, server_at):
    url = db(tmp_path)
    key = await make_key(url, rpm=2)
    good = chat_call("openai", key)
    bad = [
        chat_call("openai", key), chat_call("successor", key, scope=1), chat_call("openai", key),
    ]
    bad[0].body["response_format"] = UNIQUE
    bad[1].body["tool_choice"] = {"type": "function", "function": {"name": "missing"}}
    bad[1].body["tools"] = [{"type": "function", "function": {"name": "present"}}]
    bad[2].body["messages"].append({"role": "tool", "tool_call_id": "nobody", "content": "x"})
    with server_at(url) as live:
        refused = await fire(live, bad)
        served = await fire(live, [good, good, good])
    assert [r.status_code for r in refused] == [400, 400, 400]
    assert [r.json()["error"]["param"] for r in refused] == ["response_format", "tool_choice", "messages[1].tool_call_id"]
    assert sorted(r.status_code for r in served) == [200, 200, 429]  # the two requests of the minute were still there
    engine = create_engine(url)  # the server has stopped: its usage writer has flushed
    try:
        rows = await usage_rows(engine)
    finally:
        await engine.dispose()
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "rate_limited"]
