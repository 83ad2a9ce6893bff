"""The remote engine against fake nodes on real HTTP: the outputs relayed exactly, a failing node
retried elsewhere before the first output and cooled down, a node dying mid-stream reported as a
lost request, a full node passed over without blame, a request's own fault never blamed on a
node, `finish` ending a request at once, fields an upstream kind cannot honour refused by name,
and probes taking nodes out and back. The same engine behind real gateways and real chatforge
nodes is tests/upstream/test_fleet.py."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams
from chatforge.service.errors import InvalidRequestError
from chatforge.settings import FleetConfig, UpstreamEntry
from chatforge.upstream.client import build_client
from chatforge.upstream.health import Upstream
from chatforge.upstream.remote_engine import InvalidFieldError, RemoteEngine

from .fake_node import FakeNode
from .servers import ThreadServer, unused_url

MODEL = "fake-model"
PROMPT = list(range(100, 140))


@pytest.fixture(scope="module")
def fakes():
    nodes = [FakeNode(MODEL, token_delay=0.005) for _ in range(2)]
    servers = [ThreadServer(n.app()) for n in nodes]
    for s in servers:
        s.__enter__()
    yield list(zip(nodes, servers))
    for s in servers:
        s.__exit__()


@pytest.fixture(autouse=True)
def reset(fakes):
    for node, _ in fakes:
        node.cut_after, node.error, node.stop_id, node.token_delay, node.refuse = None, None, None, 0.005, None
        node.bodies.clear()


def make_engine(upstreams: list[tuple[str, str]], **config) -> RemoteEngine:
    fleet = FleetConfig(**({"health_interval_s": 0.1, "cooldown_s": 30.0} | config))
    built = [Upstream(build_client(UpstreamEntry(url=url, kind=kind), MODEL, fleet, stop_ids=[2])) for url, kind in upstreams]
    return RemoteEngine(MODEL, built, fleet)


async def collect(engine: RemoteEngine, request_id: str, params: SamplingParams, prompt=PROMPT):
    async with aclosing(engine.generate(request_id, prompt, params)) as outputs:
        return [out async for out in outputs]


def tokens(outputs) -> list[int]:
    return [t for out in outputs for c in out.outputs for t in c.new_token_ids]


async def test_outputs_are_relayed_exactly_and_a_prefix_stays_on_one_node(fakes):
    engine = make_engine([(s.url, "chatforge") for _, s in fakes])
    served_before = [n.served for n, _ in fakes]
    for i in range(6):
        outputs = await collect(engine, f"r{i}", SamplingParams(max_tokens=5))
        assert tokens(outputs) == fakes[0][0].answer_ids[:5]
        assert outputs[-1].finished and outputs[-1].outputs[-1].finish_reason is FinishReason.LENGTH
        assert all(out.request_id == f"r{i}" for out in outputs)
    served = [n.served - b for (n, _), b in zip(fakes, served_before)]
    assert sorted(served) == [0, 6]
    assert sum(u.counters.affinity_hits for u in engine.upstreams) == 6
    assert all(u.outstanding == 0 for u in engine.upstreams)
    await engine.close()


async def test_an_unreachable_node_is_retried_elsewhere_and_cooled_down(fakes):
    dead = unused_url()
    engine = make_engine([(dead, "chatforge"), (fakes[0][1].url, "chatforge")], policy="round_robin")
    for i in range(4):
        assert tokens(await collect(engine, f"u{i}", SamplingParams(max_tokens=3))) == fakes[0][0].answer_ids[:3]
    down = engine.upstreams[0]
    assert down.counters.cooldowns == 1 and down.counters.requests == {"failed": 1}  # tried once, then skipped
    assert down.cooling(time.monotonic()) and engine.upstreams[1].counters.requests == {"completed": 4}
    await engine.close()


async def test_a_node_dying_mid_stream_loses_the_request_and_is_cooled_down(fakes):
    node, server = fakes[0]
    node.cut_after = 2
    engine = make_engine([(server.url, "chatforge"), (fakes[1][1].url, "chatforge")], policy="round_robin")
    engine.balancer._turn = -1  # the first pick is the dying node
    seen = []
    with pytest.raises(engine_errors.RequestLostError):
        async with aclosing(engine.generate("m1", PROMPT, SamplingParams(max_tokens=8))) as outputs:
            async for out in outputs:
                seen.append(out)
    assert tokens(seen) == node.answer_ids[:2]
    assert engine.upstreams[0].cooling(time.monotonic())
    assert tokens(await collect(engine, "m2", SamplingParams(max_tokens=3))) == node.answer_ids[:3]  # on the other
    await engine.close()


async def test_a_full_node_is_passed_over_without_blame(fakes):
    fakes[0][0].error = {"type": "overloaded", "message": "the waiting queue is full"}
    engine = make_engine([(s.url, "chatforge") for _, s in fakes], policy="round_robin")
    engine.balancer._turn = -1
    assert tokens(await collect(engine, "o1", SamplingParams(max_tokens=2))) == fakes[1][0].answer_ids[:2]
    full = engine.upstreams[0]
    assert full.counters.requests == {"busy": 1} and full.counters.failures == 0 and not full.cooling(time.monotonic())
    fakes[1][0].error = fakes[0][0].error
    with pytest.raises(engine_errors.EngineOverloadedError):  # everyone is full: the caller hears 503
        await collect(engine, "o2", SamplingParams(max_tokens=2))
    await engine.close()


async def test_a_node_answering_503_is_left_at_once_and_the_request_goes_elsewhere(fakes):
    fakes[0][0].refuse = (503, "this node is shutting down")  # a draining chatforge node answers so too
    engine = make_engine([(s.url, "vllm") for _, s in fakes], policy="round_robin", allowed_fails=3)
    engine.balancer._turn = -1  # the first pick is the refusing node
    assert tokens(await collect(engine, "d1", SamplingParams(max_tokens=2))) == fakes[1][0].answer_ids[:2]
    draining = engine.upstreams[0]
    assert draining.counters.cooldowns == 1 and draining.cooling(time.monotonic())  # one 503, not three 500s
    assert "shutting down" in draining.detail
    await engine.close()


async def test_a_request_fault_is_never_a_node_failure(fakes):
    for node, _ in fakes:
        node.error = {"type": "prompt_too_long", "message": "too long", "prompt_tokens": 40, "max_prompt_tokens": 30}
    engine = make_engine([(s.url, "chatforge") for _, s in fakes], allowed_fails=1)
    for i in range(3):
        with pytest.raises(engine_errors.PromptTooLongError) as caught:
            await collect(engine, f"p{i}", SamplingParams(max_tokens=2))
        assert caught.value.max_prompt_tokens == 30
    for node, _ in fakes:
        node.error = {"type": "invalid_request", "message": "token 99999 is outside the vocabulary"}
    with pytest.raises(engine_errors.InvalidRequestError, match="outside the vocabulary"):
        await collect(engine, "p3", SamplingParams(max_tokens=2))
    assert all(u.counters.failures == 0 and u.counters.retries == 0 for u in engine.upstreams)
    assert sum(u.counters.requests.get("refused", 0) for u in engine.upstreams) == 4
    await engine.close()
    fakes[0][0].refuse = (400, "This model's maximum context length is 2048 tokens")
    vllm = make_engine([(fakes[0][1].url, "vllm")], allowed_fails=1)  # an OpenAI-compatible 400 likewise
    with pytest.raises(engine_errors.InvalidRequestError, match="maximum context length"):
        await collect(vllm, "p4", SamplingParams(max_tokens=2))
    assert vllm.upstreams[0].counters.failures == 0
    fakes[0][0].refuse = (500, "boom")  # and a 500 is the upstream's failure
    with pytest.raises(engine_errors.EngineDeadError, match="HTTP 500"):
        await collect(vllm, "p5", SamplingParams(max_tokens=2))
    assert vllm.upstreams[0].counters.failures == 1
    await vllm.close()


async def test_finish_ends_the_request_at_once_and_frees_the_node(fakes):
    node, server = fakes[0]
    node.token_delay = 0.05
    engine = make_engine([(server.url, "chatforge")])
    seen = []
    async with aclosing(engine.generate("f1", PROMPT, SamplingParams(max_tokens=500, logprobs=False))) as outputs:
        async for out in outputs:
            seen.append(out)
            if len(seen) == 2:
                engine.finish("f1", FinishReason.LENGTH)
    last = seen[-1]
    assert len(seen) == 3 and last.finished and last.outputs[0].finish_reason is FinishReason.LENGTH
    assert last.outputs[0].num_generated == 2 and last.outputs[0].new_token_ids == []
    for _ in range(100):
        if node.running == 0:
            break
        await asyncio.sleep(0.02)
    assert node.running == 0  # the node's stream was closed: its request is gone
    assert engine.upstreams[0].counters.requests == {"finished": 1}
    await engine.close()


async def test_fields_an_upstream_kind_cannot_honour_are_refused_by_name(fakes):
    engine = make_engine([(fakes[0][1].url, "vllm")])
    with pytest.raises(InvalidRequestError) as before_admission:  # what prepare() asks, before any reservation
        engine.check_sampling(SamplingParams(max_tokens=2, typical_p=0.5))
    assert before_admission.value.param == "typical_p" and before_admission.value.status == 400
    with pytest.raises(InvalidFieldError) as caught:  # and the engine itself, if asked to run it anyway
        await collect(engine, "c1", SamplingParams(max_tokens=2, typical_p=0.5))
    assert caught.value.param == "typical_p" and "typical_p" in str(caught.value)
    mixed = make_engine([(fakes[0][1].url, "vllm"), (fakes[1][1].url, "chatforge")])
    mixed.check_sampling(SamplingParams(max_tokens=2, typical_p=0.5))  # one of them honours it
    served = fakes[1][0].served
    await collect(mixed, "c2", SamplingParams(max_tokens=2, typical_p=0.5))  # goes where it is honoured
    assert fakes[1][0].served == served + 1
    await engine.close()
    await mixed.close()


async def test_an_openai_compatible_upstream_gives_token_ids_and_takes_the_stop_id_off(fakes):
    node, server = fakes[0]
    node.stop_id = 2
    engine = make_engine([(server.url, "vllm")])
    outputs = await collect(engine, "v1", SamplingParams(max_tokens=50, temperature=0, top_k=3, seed=5))
    assert tokens(outputs) == node.answer_ids
    final = outputs[-1].outputs[-1]
    assert (final.finish_reason, final.stop_token_id, final.num_generated) == (FinishReason.STOP, 2, len(node.answer_ids) + 1)
    body = node.bodies[-1]
    assert body["prompt"] == PROMPT and body["return_token_ids"] is True and body["stream"] is True
    assert (body["temperature"], body["top_k"], body["seed"], body["max_tokens"]) == (0.0, 3, 5, 50)
    await engine.close()


async def test_probes_take_a_node_out_and_bring_it_back(fakes):
    node, server = fakes[0]
    engine = make_engine([(server.url, "chatforge")])
    await engine.open()
    upstream = engine.upstreams[0]
    assert upstream.healthy and engine.is_running
    node.error = None
    original = upstream.client.entry
    upstream.client.entry = UpstreamEntry(url=server.url, health_path="/nowhere")  # probes now fail (404)
    await asyncio.sleep(0.5)
    assert not upstream.healthy and not engine.is_running and "404" in upstream.detail
    upstream.client.entry = original
    await asyncio.sleep(0.3)
    assert upstream.healthy and engine.is_running
    await engine.close()
