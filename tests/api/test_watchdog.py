"""The engine watchdog (api/watchdog.py): a step past the limit marks the engine unhealthy in
/health and /metrics until steps complete again. End to end on the real engine with a limit no
prefill can meet, and the rule itself on snapshots held still."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.api.watchdog import EngineWatchdog
from chatforge.engine.stats import EngineStats

from .conftest import LiveServer, metric

LIMIT_S = 0.02  # a 150-token prefill takes far longer on any CPU


@pytest.mark.parametrize("beside_a_stream", [True, False], ids=["beside-a-stream", "from-idle"])
def test_a_long_step_marks_the_engine_unhealthy_until_it_ends(api_settings, catalog, tmp_path, beside_a_stream):
    settings = api_settings.model_copy(update={
        "database_url": f"sqlite:///{tmp_path / 'c.db'}",
        "server": api_settings.server.model_copy(update={"engine_step_timeout_s": LIMIT_S}),
    })
    model = "smollm2"
    with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        async def load():
            async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
                answers = []
                if beside_a_stream:
                    answers.append(asyncio.create_task(client.post("/v1/chat/completions", json={
                        "model": model, "max_tokens": 24, "ignore_eos": True,
                        "messages": [{"role": "user", "content": "Count."}]})))
                    await asyncio.sleep(0.1)  # decoding: the engine holds work
                # From an idle engine, the step's only snapshot before it is the one taken when
                # the request was added: it must show the work. (Each case its own prompt: no
                # prefix-cache hit may shorten the step.)
                prefill = await client.post("/v1/chat/completions", json={
                    "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": ("word " if beside_a_stream else "term ") * 150}]})
                return [await a for a in answers] + [prefill]

        seen = []
        poller_done = False

        def poll():
            while not poller_done:
                seen.append(httpx.get(live.url + "/health", timeout=30))
                time.sleep(0.025)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            answers = asyncio.run(load())
        finally:
            poller_done = True
            poller.join()
        assert [a.status_code for a in answers] == [200] * (2 if beside_a_stream else 1)
        unhealthy = [r.json() for r in seen if r.status_code == 503]
        assert unhealthy and unhealthy[0]["status"] == "unhealthy"
        assert unhealthy[0]["stalled_engines"] == [catalog.default.model_id]
        deadline = time.monotonic() + 10
        while http.get("/health").status_code != 200:  # steps complete again: healthy
            assert time.monotonic() < deadline
            time.sleep(0.05)
        text = http.get("/metrics").text
        assert metric(text, "chatforge_engine_stalls_total") >= 1
        assert metric(text, f'chatforge_engine_stalled{{model="{catalog.default.model_id}"}}') == 0


def _stats(running: int, waiting: int = 0) -> EngineStats:
    return EngineStats(running, waiting, 0.0, 10, 0, 0, 0, 0, 0, 0, 0)


def test_the_rule_a_snapshot_held_with_work_is_a_stall_idle_is_not():
    engine = SimpleNamespace(stats=lambda: held)
    catalog = SimpleNamespace(models=[SimpleNamespace(model_id="m", engine=engine)])
    watchdog = EngineWatchdog(catalog, step_timeout_s=0.05)
    held = _stats(running=0)
    watchdog.check()
    time.sleep(0.1)
    watchdog.check()
    assert watchdog.stalled == set()  # idle: nothing to step
    held = _stats(running=2)
    watchdog.check()
    time.sleep(0.1)
    watchdog.check()
    assert (watchdog.stalled, watchdog.stalls) == ({"m"}, 1)
    watchdog.check()
    assert watchdog.stalls == 1  # counted once per stall
    held = dataclasses.replace(held, generated_tokens_total=1)  # a new snapshot: a step ended
    watchdog.check()
    assert watchdog.stalled == set()
