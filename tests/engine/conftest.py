"""Fixtures of the engine tests that need real weights: the bundled SmolLM2 model, loaded once
per session on each backend (native, the default; torch, the exact mode) and shared by every
engine (each engine allocates its own small KV pool), and one unconstrained greedy run of 16
prompts that several tests compare against."""

from __future__ import annotations

import random

import pytest

from chatforge.engine.config import EngineConfig
from chatforge.engine.llm_engine import LLMEngine
from chatforge.engine.sampling_params import SamplingParams

NUM_TOKENS = 24  # generated per request in the bundled-model tests


@pytest.fixture(scope="session")
def smollm(bundled_gguf):
    """The bundled model on the native backend (the default), one thread."""
    from chatforge.models.backend import load_native
    from chatforge.models.source import resolve_model

    return load_native(resolve_model(str(bundled_gguf)), threads=1)


@pytest.fixture(scope="session")
def smollm_exact(bundled_gguf):
    """The bundled model on the torch backend (weights="exact"), float32."""
    from chatforge.models.loader import load_model
    from chatforge.models.source import resolve_model
    from chatforge.models.torch_backend import TorchBackend

    return TorchBackend(load_model(resolve_model(str(bundled_gguf)))[0])


@pytest.fixture(scope="session")
def make_engine(smollm, smollm_exact):
    """factory(**EngineConfig fields) -> an LLMEngine on the shared model of its `weights` mode."""

    def make(**config) -> LLMEngine:
        config = {"num_kv_blocks": 128, "block_size": 16, "max_num_seqs": 32, **config}
        backend = smollm_exact if config.get("weights") == "exact" else smollm
        return LLMEngine(backend, EngineConfig(**config), seed=0)

    return make


@pytest.fixture(scope="session")
def prompts() -> list[list[int]]:
    """16 different prompts of 6..40 tokens: BOS then token ids drawn from the vocabulary."""
    rng = random.Random(2024)
    return [[1] + [rng.randrange(100, 49000) for _ in range(rng.randrange(5, 40))] for _ in range(16)]


GREEDY = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True)


def _run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[list[int]]]:
    """Add every request, step until all finish; the generated ids of each completion."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    tokens = {request_id: [[] for _ in range(params.n)] for request_id, (_, params) in requests.items()}
    while engine.has_unfinished():
        for out in engine.step():
            for completion in out.outputs:
                tokens[out.request_id][completion.index].extend(completion.new_token_ids)
    return tokens


@pytest.fixture(scope="session")
def run_requests():
    return _run


@pytest.fixture(scope="session")
def greedy_params() -> SamplingParams:
    return GREEDY


@pytest.fixture(scope="session")
def greedy_together(make_engine, prompts) -> dict[str, list[int]]:
    """The 16 prompts run together, greedy, on an unconstrained engine."""
    engine = make_engine()
    out = _run(engine, {str(i): (p, GREEDY) for i, p in enumerate(prompts)})
    assert engine.stats().preemptions == 0
    return {request_id: completions[0] for request_id, completions in out.items()}
