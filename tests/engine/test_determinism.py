"""The default configuration's promise (README "Determinism"): a greedy or seeded request gets
the same tokens alone and among 32 concurrent streams, with chunked prefill and preemption in
the way too. Through AsyncEngine, on the bundled model, the engine's default backend (native)
with two threads."""

from __future__ import annotations

import asyncio
import random

import pytest

from chatforge.engine.async_engine import AsyncEngine
from chatforge.engine.config import EngineConfig
from chatforge.engine.llm_engine import LLMEngine
from chatforge.engine.sampling_params import SamplingParams

TOKENS = 12

# (prompt index, params) of the requests whose tokens must not depend on their company
WATCHED = [
    (0, SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)),
    (1, SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True, repetition_penalty=1.3)),
    (2, SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=TOKENS, ignore_eos=True)),
    (3, SamplingParams(temperature=1.0, top_k=40, seed=12345, max_tokens=TOKENS, ignore_eos=True)),
    (4, SamplingParams(temperature=0.7, min_p=0.05, seed=2**40, max_tokens=TOKENS, ignore_eos=True, frequency_penalty=0.5)),
    (5, SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)),
]


@pytest.fixture(scope="module")
def backend(bundled_gguf):
    from chatforge.models.backend import load_backend
    from chatforge.models.source import resolve_model

    # EngineConfig()'s own choice (weights "native"), with two threads whatever the machine
    return load_backend(resolve_model(str(bundled_gguf)), EngineConfig().weights, threads=2)


def fillers(prompts: list[list[int]], count: int) -> list[tuple[list[int], SamplingParams]]:
    """Unseeded company of every kind: other prompts, other lengths, other parameters."""
    rng = random.Random(99)
    out = []
    for i in range(count):
        prompt = prompts[6 + i % 10][: rng.randrange(3, 40)]
        params = SamplingParams(temperature=rng.choice([0, 0.5, 1.0]), top_k=rng.choice([0, 20]),
                                max_tokens=rng.randrange(4, 2 * TOKENS), ignore_eos=True)
        out.append((prompt, params))
    return out


async def run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    """Every request at once through an AsyncEngine; the tokens of each."""
    async_engine = AsyncEngine(engine)
    async_engine.start()

    async def one(i, prompt, params):
        tokens = []
        async for out in async_engine.generate(str(i), prompt, params):
            tokens.extend(out.outputs[0].new_token_ids)
        return tokens

    try:
        return await asyncio.gather(*(one(i, p, s) for i, (p, s) in enumerate(requests)))
    finally:
        await asyncio.to_thread(async_engine.shutdown)


def engine(backend, **config) -> LLMEngine:
    return LLMEngine(backend, EngineConfig(**{"num_kv_blocks": 256, "max_num_seqs": 32, **config}), seed=0)


async def test_greedy_and_seeded_tokens_are_the_same_alone_and_among_32_streams(backend, prompts):
    watched = [(prompts[i], params) for i, params in WATCHED]
    alone = [(await run(engine(backend), [request]))[0] for request in watched]
    assert all(len(tokens) == TOKENS for tokens in alone)
    assert len({tuple(t) for t in alone}) == len(alone)

    crowd = engine(backend)
    together = await run(crowd, watched + fillers(prompts, 32 - len(watched)))
    assert together[: len(watched)] == alone
    assert crowd.stats().num_blocks_used == 0

    # prompts prefilled in chunks of at most 24 tokens beside decodes, and a KV pool so small that
    # running sequences are preempted and recomputed
    squeezed = engine(backend, num_kv_blocks=24, max_num_batched_tokens=32)
    together = await run(squeezed, fillers(prompts, 13) + watched + fillers(prompts, 13))
    assert together[13 : 13 + len(watched)] == alone
    assert squeezed.stats().preemptions > 0
