"""A fleet on one machine: three `chatforge serve --gateway` processes over one PostgreSQL and one
Redis, in front of two `chatforge serve --engine-only` nodes running the bundled model, and a
fake vLLM-style node as a third-party upstream of a second model.

- every dialect answers through a gateway, for both models; a field the third-party kind cannot
  honour is a 400 naming it;
- greedy and seeded answers are the same from either node and through a gateway;
- requests sharing a long system prompt land on one node;
- RPM 5 across three gateways admits exactly 5 of 20;
- a node killed mid-load: requests that had not started streaming complete on the other node
  (those that do not stream are run again there), running streams end with the in-band error
  within a second, each request has one usage row and one settled reservation; the node
  restarted is used again;
- a node drained (SIGTERM, last): its load says draining, new requests go to the other node,
  what it still runs at its drain timeout ends with finish reason length, and it exits 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import httpx
import pytest
import redis

from api.platform_fixtures import free_port, postgres_server, redis_url, run_sql, usage_rows  # noqa: F401 - fixtures
from chatforge.models.source import resolve_model
from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade
from chatforge.text.named_templates import template_for_model
from chatforge.text.tokenizer import load_tokenizer
from chatforge.upstream.balancer import prefix_key, rendezvous

from .fake_node import FakeNode
from .processes import ServeProcess
from .servers import ThreadServer

NODE_TOKEN = "fleet-test-node-token"
FAKE = "fake-model"
MAX_SEQS = 16
NODE_DRAIN_TIMEOUT_S = 2.0


@dataclass
class Fleet:
    gateways: list[ServeProcess]
    nodes: list[ServeProcess]
    fake: FakeNode
    database_url: str
    redis_url: str
    keys: dict[str, tuple[str, int]]  # name -> (secret, key id)
    fake_url: str


def gateway_config(nodes: list[ServeProcess], fake_url: str) -> str:
    upstreams = ", ".join(f'{{url = "{n.url}"}}' for n in nodes)
    return f"""
[fleet]
node_token = "{NODE_TOKEN}"
health_interval_s = 0.5
cooldown_s = 5.0

[[models]]
path = "smollm2"
upstreams = [{upstreams}]

[[models]]
path = "smollm2"
id = "{FAKE}"
upstreams = [{{url = "{fake_url}", kind = "vllm"}}]
"""


@pytest.fixture(scope="module")
def fleet(postgres_server, redis_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    database_url = postgres_server.create_database()
    shared_redis = redis_url.rsplit("/", 1)[0] + "/14"

    async def seed():
        await upgrade(database_url)

        async def work(conn):
            await accounts.create_account(conn, "acme")
            await accounts.create_product(conn, 1, "acme", ["smollm2", FAKE])
            await accounts.create_deployment(conn, "d-acme", "acme", "smollm2")
            await accounts.create_deployment(conn, "d-fake", "acme", FAKE)
            made = {}
            for name, options in (("open", {}), ("rpm5", {"rpm": 5}), ("metered", {"tpm": 10_000_000})):
                secret, key = await keys.create_key(conn, ["acme"], name=name, **options)
                made[name] = (secret, key.id)
            return made

        return await run_sql(database_url, work)

    made = asyncio.run(seed())
    with redis.Redis.from_url(shared_redis) as client:
        client.flushdb()
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    fake = FakeNode(FAKE, token_delay=0.01, answer_ids=tokenizer.encode(" Paris is lovely in spring."),
                    stop_id=sorted(tokenizer.end_of_turn_ids)[0])
    fake_server = ThreadServer(fake.app()).__enter__()
    env = {"CHATFORGE_FLEET__NODE_TOKEN": NODE_TOKEN, "CHATFORGE_LOG_LEVEL": "info"}
    node_env = {**env, "CHATFORGE_ENGINE__KV_CACHE_MB": "64", "CHATFORGE_ENGINE__MAX_NUM_SEQS": str(MAX_SEQS),
                "CHATFORGE_SERVER__DRAIN_TIMEOUT_S": str(NODE_DRAIN_TIMEOUT_S)}
    nodes = [ServeProcess(f"node{i}", free_port(), ["--engine-only", "--threads", "1", "--database-url",
                                                   f"sqlite:///{folder / f'node{i}.db'}"], folder, node_env)
             for i in range(2)]
    (folder / "gateways.toml").write_text(gateway_config(nodes, fake_server.url))
    gateways = [ServeProcess(f"gateway{i}", free_port(), ["--gateway", "--config", str(folder / "gateways.toml"),
                                                         "--database-url", database_url, "--redis-url", shared_redis],
                             folder, env) for i in range(3)]
    try:
        for p in nodes:
            p.start()
        for p in nodes:
            p.wait_healthy()
        for p in gateways:
            p.start()
        for p in gateways:
            p.wait_healthy()
        yield Fleet(gateways, nodes, fake, database_url, shared_redis, made, fake_server.url)
    finally:
        for p in [*gateways, *nodes]:
            p.stop()
        fake_server.__exit__()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def openai_body(content: str, **extra) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


# -- dialects ------------------------------------------------------------------------------------


def test_every_dialect_answers_through_a_gateway_for_both_models(fleet):
    key = fleet.keys["open"][0]
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    calls = [
        ("/v1/chat/completions", {"model": "smollm2", "messages": ask, "max_tokens": 8, "temperature": 0}, bearer(key)),
        ("/v1/openai/chat/completions", {"model": FAKE, "messages": ask, "max_tokens": 8}, bearer(key)),
        ("/1/llm/1", {"messages": ask, "max_new_tokens": 8}, bearer(key)),
        ("/1/ai/1/openai/chat/completions", {"model": FAKE, "messages": ask, "max_tokens": 8}, bearer(key)),
        ("/v4/models/d-acme/chat-completions", {"chat_history": [], "prompt": "What is the capital of France?", "max_tokens": 8},
         {"x-api-key": key}),
        ("/v4/models/d-fake/chat-completions", {"chat_history": [], "prompt": "Hello", "max_tokens": 8}, {"x-api-key": key}),
    ]
    texts = []
    for i, (path, body, headers) in enumerate(calls):
        r = httpx.post(fleet.gateways[i % 3].url + path, json=body, headers=headers, timeout=120)
        assert r.status_code == 200, (path, r.text)
        texts.append(json.dumps(r.json()))
    direct = httpx.post(fleet.nodes[0].url + "/v1/chat/completions", json=calls[0][1], timeout=120).json()
    assert json.loads(texts[0])["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]  # a node's
    assert "Paris is lovely" in texts[1] and "Paris is lovely" in texts[3] and "Paris is lovely" in texts[5]  # the fake
    completion = httpx.post(fleet.gateways[0].url + "/v1/completions", headers=bearer(key), timeout=120, json={
        "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "echo": True,
        "logprobs": 1})
    assert completion.status_code == 200, completion.text
    logprobs = completion.json()["choices"][0]["logprobs"]  # the prompt's too, computed on a node
    assert logprobs["token_logprobs"][0] is None and len(logprobs["token_logprobs"]) > 3
    assert all(isinstance(lp, float) for lp in logprobs["token_logprobs"][1:])
    with httpx.stream("POST", fleet.gateways[1].url + "/v1/chat/completions", headers=bearer(key), timeout=120,
                      json={"model": FAKE, "messages": ask, "max_tokens": 30, "stream": True}) as r:
        frames = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == " Paris is lovely in spring."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # its stop id ended it, and is not in the text


def test_a_constrained_answer_is_compiled_on_the_gateway_and_enforced_on_the_node(fleet):
    key = fleet.keys["open"][0]
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Where is the Eiffel tower? Answer in JSON."}],
            "max_tokens": 40, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}}
    r = httpx.post(fleet.gateways[2].url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=120)
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"city"} and isinstance(answer["city"], str)
    refused = httpx.post(fleet.gateways[2].url + "/v1/chat/completions", json={**body, "model": FAKE}, headers=bearer(key),
                         timeout=60)
    assert refused.status_code == 400 and "response_format" in refused.json()["error"]["message"], refused.text


def test_a_field_the_third_party_engine_cannot_honour_is_refused_by_name(fleet):
    key = fleet.keys["open"][0]
    served = fleet.fake.served
    r = httpx.post(fleet.gateways[0].url + "/1/llm/1", headers=bearer(key), timeout=60,
                   json={"model": FAKE, "messages": [{"role": "user", "content": "Hi"}], "typical_p": 0.5})
    assert r.status_code == 400 and "typical_p" in r.text, r.text
    assert fleet.fake.served == served
    ok = httpx.post(fleet.gateways[0].url + "/1/llm/1", headers=bearer(key), timeout=120,  # honoured by chatforge nodes
                    json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "typical_p": 0.5,
                          "max_new_tokens": 4})
    assert ok.status_code == 200, ok.text


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 1234, "top_p": 0.95}])
def test_greedy_and_seeded_answers_are_the_same_whichever_node_serves_them(fleet, sampling):
    body = openai_body("Name three fruits and say why you like them.", max_tokens=16, logprobs=True, **sampling)
    answers = []
    for node in fleet.nodes:  # each node's own OpenAI route
        r = httpx.post(node.url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0])
    key = fleet.keys["open"][0]
    for gateway in fleet.gateways:
        r = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=120)
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0])
    texts = {a["message"]["content"] for a in answers}
    assert len(texts) == 1 and len(next(iter(texts))) > 20, texts
    tokens = {tuple(t["token"] for t in a["logprobs"]["content"]) for a in answers}
    assert len(tokens) == 1


# -- prefix affinity -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    url: str
    weight: float = 1.0


def node_of(fleet: Fleet) -> dict[str, str]:
    """request id -> the node that served it, from the nodes' log lines."""
    where = {}
    for node in fleet.nodes:
        for request_id in re.findall(r"node request (\S+)\.[0-9a-f]{6} ", node.log_text()):
            where[request_id] = node.name
    return where


async def test_requests_sharing_a_long_system_prompt_land_on_one_node(fleet):
    key = fleet.keys["open"][0]
    systems = [" ".join(f"Rule {i}.{j}: answer {topic} questions briefly and politely." for j in range(30))
               for i, topic in enumerate(("history", "cooking", "physics", "music"))]
    order = [(s, q) for q in range(10) for s in range(len(systems))]  # interleaved
    ids: dict[int, list[str]] = defaultdict(list)
    gate = asyncio.Semaphore(4)

    async def one(client, i, system, question):
        body = {"model": "smollm2", "max_tokens": 1, "messages": [
            {"role": "system", "content": systems[system]}, {"role": "user", "content": f"Question number {question}?"}]}
        async with gate:
            r = await client.post(fleet.gateways[i % 2].url + "/v1/chat/completions", json=body, headers=bearer(key))
        assert r.status_code == 200, r.text
        ids[system].append(r.headers["x-request-id"])

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(one(client, i, s, q) for i, (s, q) in enumerate(order)))
    where = node_of(fleet)
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    template = template_for_model(tokenizer, None)
    for system, request_ids in ids.items():
        counts = Counter(where[r] for r in request_ids)
        node, most = counts.most_common(1)[0]
        assert most >= 9, (system, counts)
        # ... and it is the node any gateway computes for that prompt, with no state shared
        prompt = tokenizer.encode(template.render([{"role": "system", "content": systems[system]},
                                                   {"role": "user", "content": "Question number 0?"}]))
        favourite = rendezvous([Candidate(n.url) for n in fleet.nodes], prefix_key(prompt, 64))
        assert favourite.url == next(n.url for n in fleet.nodes if n.name == node)


# -- keys and operations -------------------------------------------------------------------------


async def test_a_revoked_key_is_refused_by_every_gateway_within_the_key_cache_period(fleet):
    async def make(conn):
        return await keys.create_key(conn, ["acme"], name="short-lived")

    secret, key = await run_sql(fleet.database_url, make)
    body = openai_body("Hi", max_tokens=1)
    for gateway in fleet.gateways:  # each gateway has looked it up, and trusts it for a while
        assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=bearer(secret), timeout=120).status_code == 200

    async def revoke(conn):
        await keys.revoke_key(conn, key.prefix)

    await run_sql(fleet.database_url, revoke)
    revoked_at = time.monotonic()
    refused_after = {}
    while len(refused_after) < 3 and time.monotonic() - revoked_at < 10:
        for gateway in fleet.gateways:
            if gateway.name not in refused_after:
                r = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=bearer(secret), timeout=120)
                if r.status_code == 401:
                    assert r.json()["error"]["message"] == "This API key is revoked."
                    refused_after[gateway.name] = time.monotonic() - revoked_at
        await asyncio.sleep(0.1)
    assert len(refused_after) == 3 and max(refused_after.values()) < 2.0 + 1.0, refused_after  # key_cache_s = 2 on a gateway


def test_chatforge_nodes_lists_every_upstream_and_its_health(fleet):
    command = [sys.executable, "-m", "chatforge.cli", "nodes", "--config", str(fleet.gateways[0].folder / "gateways.toml"), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=fleet.gateways[0].env)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert {(r["model"], r["kind"], r["url"], r["status"]) for r in rows} == {
        *(("HuggingFaceTB/SmolLM2-135M-Instruct", "chatforge", n.url, "healthy") for n in fleet.nodes),
        (FAKE, "vllm", fleet.fake_url, "healthy")}
    assert all(r["waiting"] == 0 for r in rows if r["kind"] == "chatforge")


# -- limits ----------------------------------------------------------------------------------------


async def test_rpm_5_admits_exactly_5_of_20_across_three_gateways(fleet):
    key = fleet.keys["rpm5"][0]
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(*(
            client.post(fleet.gateways[i % 3].url + "/v1/chat/completions", headers=bearer(key),
                        json=openai_body(f"Count to {i}.", max_tokens=2)) for i in range(20)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 5, 429: 15}, [r.text for r in responses if r.status_code not in (200, 429)]


# -- a node killed mid-load ------------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str | None
    status: int
    streamed: bool
    first_content: float | None = None  # time.monotonic() of the first text
    ended: float | None = None
    error: dict | None = None
    finish_reason: str | None = None
    done: bool = False


async def stream_call(client, url: str, key: str, content: str) -> Outcome:
    body = openai_body(content, max_tokens=48, min_tokens=48, stream=True)
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=bearer(key)) as r:
        out = Outcome(r.headers.get("x-request-id"), r.status_code, True)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out.done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                out.error = chunk["error"]
                out.ended = time.monotonic()
                continue
            for choice in chunk["choices"]:
                if choice["delta"].get("content") and out.first_content is None:
                    out.first_content = time.monotonic()
                out.finish_reason = choice.get("finish_reason") or out.finish_reason
        out.ended = out.ended or time.monotonic()
        return out


async def plain_call(client, url: str, key: str, content: str) -> Outcome:
    r = await client.post(url + "/v1/chat/completions", json=openai_body(content, max_tokens=48, min_tokens=48),
                          headers=bearer(key))
    out = Outcome(r.headers.get("x-request-id"), r.status_code, False, ended=time.monotonic())
    if r.status_code == 200:
        out.finish_reason = r.json()["choices"][0]["finish_reason"]
    return out


def load(node: ServeProcess) -> dict:
    return httpx.get(node.url + "/internal/v1/load", headers=bearer(NODE_TOKEN), timeout=5).json()["models"]


async def test_a_node_killed_mid_load(fleet):
    key, key_id = fleet.keys["metered"]
    victim, survivor = fleet.nodes[1], fleet.nodes[0]
    prompts = [f"Tell story number {i} about a lighthouse keeper." for i in range(24)]
    async with httpx.AsyncClient(timeout=300) as client:
        first = [asyncio.create_task((stream_call if i % 2 == 0 else plain_call)(
            client, fleet.gateways[i % 3].url, key, p)) for i, p in enumerate(prompts)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both nodes busy with requests
            if all(load(n)["HuggingFaceTB/SmolLM2-135M-Instruct"]["running"] >= 3 for n in fleet.nodes):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the load never reached both nodes")
        await asyncio.sleep(1.0)  # streams under way
        killed_at = time.monotonic()
        victim.kill()
        later = [asyncio.create_task((stream_call if i % 2 == 0 else plain_call)(
            client, fleet.gateways[i % 3].url, key, f"After the kill, story {i}.")) for i in range(8)]
        outcomes = await asyncio.gather(*first, *later)

    running_then = [o for o in outcomes[:24] if o.streamed and o.first_content is not None and o.first_content < killed_at]
    cut = [o for o in outcomes if o.error is not None]
    assert cut, "no stream was running on the killed node"
    for o in cut:  # a running stream: the dialect's error frame, then [DONE], within a second
        assert any(o is r for r in running_then) and o.status == 200 and o.done
        assert o.ended - killed_at < 1.0, o.ended - killed_at
        assert o.error["code"] == "engine_unavailable" and "went away" in o.error["message"]
    for o in outcomes:
        if o.error is None:  # everything else completed in full, on the survivor if need be
            assert o.status == 200 and o.finish_reason == "length", o
    assert len(cut) < len(running_then)  # the survivor's streams were not touched
    assert sum(1 for o in outcomes if not o.streamed) == 16  # 12 + 4 not streamed, all answered

    # One usage row per request, and one settled reservation each: the limiter's entries for the
    # key hold exactly the rows' totals (a reservation left unsettled would hold prompt + 48).
    engine = create_engine(fleet.database_url)
    request_ids = sorted(o.request_id for o in outcomes)
    try:
        for _ in range(200):
            rows = [r for r in await usage_rows(engine) if r["key_id"] == key_id]
            if len(rows) >= len(outcomes):
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    assert sorted(r["request_id"] for r in rows) == request_ids
    status = {r["request_id"]: r["status"] for r in rows}
    assert all(status[o.request_id] == ("failed" if o.error else "completed") for o in outcomes)
    totals = sorted(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    with redis.Redis.from_url(fleet.redis_url) as client:
        for _ in range(100):
            settled = sorted(int(v) for v in client.hvals(f"chatforge:rl:key:{key_id}:tok"))
            if settled == totals:
                break
            time.sleep(0.05)
    assert settled == totals

    # The node comes back on its port and is used again.
    victim.start()
    victim.wait_healthy()
    await asyncio.sleep(1.5)  # two probe intervals: every gateway sees it again
    before = victim.log_text().count("node request ")
    async with httpx.AsyncClient(timeout=120) as client:
        again = await asyncio.gather(*(client.post(fleet.gateways[i % 3].url + "/v1/chat/completions", headers=bearer(key),
                                                   json=openai_body(f"Fresh question {i}?", max_tokens=2))
                                       for i in range(12)))
    assert all(r.status_code == 200 for r in again)
    assert victim.log_text().count("node request ") > before

    # What each gateway's /metrics says of it: the cooldown, the failures, and healthy again.
    seen = [metrics(g, victim.url) for g in fleet.gateways]
    assert sum(m["chatforge_upstream_cooldowns_total"] for m in seen) >= 1
    assert sum(m["chatforge_upstream_failures_total"] for m in seen) >= len(cut)
    assert all(m["chatforge_upstream_healthy"] == 1 and m["chatforge_upstream_cooling"] == 0 for m in seen)
    assert sum(m["chatforge_upstream_affinity_hits_total"] for m in seen) > 0
    assert sum(m["chatforge_upstream_first_output_seconds_count"] for m in seen) > 0
    for node in fleet.nodes:  # nothing left in flight: the counters came back to zero, never below
        assert all(metrics(g, node.url)["chatforge_upstream_outstanding"] == 0 for g in fleet.gateways)


def metrics(gateway: ServeProcess, upstream: str) -> dict[str, float]:
    """The gateway's chatforge_upstream_* samples for one upstream, summed over other labels."""
    found: dict[str, float] = defaultdict(float)
    for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("chatforge_upstream_") and f'upstream="{upstream}"' in line:
            name = line.split("{", 1)[0]
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


# -- a node drained (last: the node does not come back) ----------------------------------------------


async def test_a_node_drained_is_left_at_once_and_cuts_what_it_still_runs(fleet):
    key = fleet.keys["open"][0]
    survivor, victim = fleet.nodes
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    template = template_for_model(tokenizer, None)
    tale = " ".join(f"Chapter {j} tells of the sea, the wind and the lighthouse." for j in range(12))

    def favourite(content: str) -> str:  # the node every gateway picks for this prompt (over 64 tokens)
        prompt = tokenizer.encode(template.render([{"role": "user", "content": content}]))
        return rendezvous([Candidate(n.url) for n in fleet.nodes], prefix_key(prompt, 64)).url

    contents = [f"Story {i}. {tale}" for i in range(40)]
    on_victim = [c for c in contents if favourite(c) == victim.url][:3]
    on_survivor = [c for c in contents if favourite(c) == survivor.url][:1]
    tokens = 400

    async def long_stream(client, i: int, content: str) -> tuple[int, list]:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": tokens,
                "min_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", fleet.gateways[i % 3].url + "/v1/chat/completions", json=body,
                                 headers=bearer(key)) as r:
            lines = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
        return r.status_code, [line if line == "[DONE]" else json.loads(line) for line in lines]

    async with httpx.AsyncClient(timeout=300) as client:
        streams = [asyncio.create_task(long_stream(client, i, c)) for i, c in enumerate(on_victim + on_survivor)]
        deadline = time.monotonic() + 120
        while load(victim)[model]["running"] < len(on_victim):
            assert time.monotonic() < deadline, "the victim never got its streams"
            await asyncio.sleep(0.1)
        victim.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        exited = asyncio.create_task(asyncio.to_thread(victim.process.wait, 120))
        deadline = time.monotonic() + 10
        while (r := await client.get(victim.url + "/internal/v1/load", headers=bearer(NODE_TOKEN))).status_code != 503:
            assert time.monotonic() < deadline, "the node never said it drains"
            await asyncio.sleep(0.05)
        assert r.json()["status"] == "draining" and r.json()["in_flight"] == len(on_victim)
        later = await asyncio.gather(*(client.post(fleet.gateways[i % 3].url + "/v1/chat/completions", headers=bearer(key),
                                                   json=openai_body(c, max_tokens=2))
                                       for i, c in enumerate(on_victim)))  # the victim's favourites, while it drains
        assert await exited == 0, victim.log_text()[-3000:]
        took = time.monotonic() - signalled
        results = await asyncio.gather(*streams)
    assert took < NODE_DRAIN_TIMEOUT_S + 15, took  # its drain timeout, then the cut requests' last outputs
    assert all(r.status_code == 200 for r in later), [r.text for r in later]
    where = node_of(fleet)  # none went to it (or each was refused, and went on at once)
    assert all(where[r.headers["x-request-id"]] == survivor.name for r in later)
    completed = []
    for status, events in results:  # cut or whole, every stream ends properly: no error frame
        assert status == 200 and events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
        assert [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]] == ["length"]
        completed.append(events[-2]["usage"]["completion_tokens"])
    assert all(0 < n < tokens for n in completed[:-1]) and completed[-1] == tokens, completed  # cut there, whole here
    log = victim.log_text()
    assert f"cutting {len(on_victim)} requests short" in log and "drained" in log
