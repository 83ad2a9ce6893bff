"""The engine on the bundled SmolLM2 model: batch invariance, preemption, chunked prefill,
forks, the prefix cache, aborts, finish reasons and admission errors."""

from __future__ import annotations

import pytest

from chatforge.engine.errors import (
    DuplicateRequestError,
    EngineOverloadedError,
    InvalidRequestError,
    PromptTooLongError,
)
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams

from .conftest import NUM_TOKENS


def test_the_exact_mode_equals_the_torch_models_own_decode_loop(make_engine, smollm_exact, prompts, run_requests, greedy_params):
    from chatforge.models.generate import greedy_generate

    engine = make_engine(weights="exact")
    alone = run_requests(engine, {"0": (prompts[0], greedy_params)})["0"][0]
    assert greedy_generate(smollm_exact.model, prompts[0], NUM_TOKENS) == alone


def test_greedy_outputs_of_16_prompts_together_equal_each_alone(make_engine, prompts, greedy_together, run_requests, greedy_params):
    engine = make_engine()
    for i, prompt in enumerate(prompts):
        alone = run_requests(engine, {"alone": (prompt, greedy_params)})["alone"][0]
        assert alone == greedy_together[str(i)], f"prompt {i}"
    assert len({tuple(t) for t in greedy_together.values()}) == 16
    assert all(len(t) == NUM_TOKENS for t in greedy_together.values())


def test_the_native_default_stays_close_to_the_exact_mode(make_engine, prompts, greedy_together, run_requests, greedy_params):
    """The native backend computes the bundled GGUF's own Q4_1 / Q8_0 weights with 8-bit
    activations (llama.cpp's arithmetic) and a float16 KV cache; transformers' float32 mode
    dequantizes the same weights. On these random-token prompts (flat distributions, near ties)
    the two part after 0 to 24 tokens; most share the first tokens. Token-level accuracy on real
    prompts: tests/models/test_native_model.py."""
    engine = make_engine(weights="exact")
    exact = run_requests(engine, {str(i): (p, greedy_params) for i, p in enumerate(prompts)})
    same_first = sum(exact[k][0][:1] == greedy_together[k][:1] for k in greedy_together)
    same_two = sum(exact[k][0][:2] == greedy_together[k][:2] for k in greedy_together)
    assert same_first >= 14 and same_two >= 12, (same_first, same_two)
    assert engine.stats().num_blocks_used == 0


def test_a_seeded_request_gives_the_same_tokens_alone_and_amid_15_others(make_engine, prompts, run_requests):
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=31337, max_tokens=NUM_TOKENS, ignore_eos=True)
    alone = run_requests(make_engine(), {"seeded": (prompts[0], seeded)})["seeded"][0]
    others = {
        str(i): (p, SamplingParams(temperature=0.3 * (i % 4), top_k=20 * (i % 3), max_tokens=NUM_TOKENS, ignore_eos=True))
        for i, p in enumerate(prompts[1:], start=1)
    }
    together = run_requests(make_engine(), {"seeded": (prompts[0], seeded), **others})
    assert together["seeded"][0] == alone
    assert len(alone) == NUM_TOKENS


def test_a_kv_pool_too_small_preempts_yet_every_request_gets_its_tokens(make_engine, prompts, greedy_together, run_requests, greedy_params):
    # 8 sequences of up to 64 tokens need up to 32 blocks of 16 at once; the pool has 10.
    engine = make_engine(num_kv_blocks=10)
    out = run_requests(engine, {str(i): (p, greedy_params) for i, p in enumerate(prompts[:8])})
    assert {k: v[0] for k, v in out.items()} == {str(i): greedy_together[str(i)] for i in range(8)}
    stats = engine.stats()
    assert stats.preemptions > 0
    assert (stats.num_blocks_used, stats.kv_usage, stats.running, stats.waiting) == (0, 0.0, 0, 0)


def test_chunked_prefill_gives_the_same_tokens(make_engine, prompts, greedy_together, run_requests, greedy_params):
    engine = make_engine(max_num_batched_tokens=9, max_num_seqs=2)
    longest = sorted(range(16), key=lambda i: -len(prompts[i]))[:2]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    out = run_requests(engine, {str(i): (prompts[i], params) for i in longest})
    assert {k: v[0] for k, v in out.items()} == {str(i): greedy_together[str(i)][:8] for i in longest}


def test_n_completions_fork_from_one_prompt_and_share_its_blocks(make_engine, prompts, run_requests):
    params = SamplingParams(temperature=1.0, seed=7, n=3, max_tokens=8, ignore_eos=True)
    single = run_requests(make_engine(), {"one": (prompts[5], SamplingParams(temperature=1.0, seed=7, max_tokens=8, ignore_eos=True))})
    engine = make_engine()
    engine.add_request("three", prompts[5], params)
    first = engine.step()[0]  # prefill: all three completions draw their first token
    assert [c.index for c in first.outputs] == [0, 1, 2]
    full_blocks = len(prompts[5]) // 16
    parent_table = engine.scheduler.running[0].block_table
    assert [engine.block_manager.ref_count(b) for b in parent_table[:full_blocks]] == [3] * full_blocks
    tokens = [[c.new_token_ids[0]] for c in first.outputs]
    while engine.has_unfinished():
        for out in engine.step():
            for c in out.outputs:
                tokens[c.index].extend(c.new_token_ids)
    assert tokens[0] == single["one"][0]  # completion 0 draws with the request's own seed
    assert len({tuple(t) for t in tokens}) == 3
    assert engine.block_manager.num_used_blocks == 0


def test_a_repeated_prompt_is_served_from_the_prefix_cache(make_engine, prompts, greedy_together, run_requests):
    engine = make_engine()
    prompt = prompts[3]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    run_requests(engine, {"first": (prompt, params)})
    engine.add_request("again", prompt, params)
    out = engine.step()[0]
    assert out.num_cached_tokens == (len(prompt) - 1) // 16 * 16 > 0
    assert engine.stats().prefix_cache_hit_tokens == out.num_cached_tokens
    tokens = out.outputs[0].new_token_ids
    while engine.has_unfinished():
        tokens += engine.step()[0].outputs[0].new_token_ids
    assert tokens == greedy_together["3"][:8]


def test_abort_mid_generation_returns_every_block_to_the_pool(make_engine, prompts, greedy_params):
    engine = make_engine()
    for i in range(4):
        engine.add_request(str(i), prompts[i], greedy_params)
    for _ in range(3):
        engine.step()
    assert engine.stats().num_blocks_used > 0
    last = engine.abort("0")
    assert last.finished and [(c.index, c.finish_reason) for c in last.outputs] == [(0, FinishReason.ABORT)]
    engine.finish("1", FinishReason.STOP_SEQUENCE)
    assert engine.abort("0") is None  # already gone: not counted twice
    engine.step()
    engine.abort("2")
    engine.abort("3")
    stats = engine.stats()
    assert (stats.num_blocks_used, stats.kv_usage, stats.running, stats.aborts) == (0, 0.0, 0, 3)
    assert not engine.has_unfinished()


def test_stop_ids_length_and_raw_logprobs(make_engine, prompts, greedy_together, run_requests):
    expected = greedy_together["2"]
    stop_id = expected[3]
    engine = make_engine()
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, stop_token_ids=[stop_id], logprobs=True, top_logprobs=5, ignore_eos=True)
    engine.add_request("stop", prompts[2], params)
    engine.add_request("length", prompts[2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    got = {"stop": [], "length": []}
    last = {}
    while engine.has_unfinished():
        for out in engine.step():
            c = out.outputs[0]
            got[out.request_id].append(c)
            if out.finished:
                last[out.request_id] = c
    stop_tokens = [t for c in got["stop"] for t in c.new_token_ids]
    first_stop = expected.index(stop_id)
    assert stop_tokens == expected[:first_stop]  # the stop id itself is not part of the output
    assert (last["stop"].finish_reason, last["stop"].stop_token_id, last["stop"].num_generated) == (FinishReason.STOP, stop_id, first_stop + 1)
    assert (last["length"].finish_reason, last["length"].num_generated) == (FinishReason.LENGTH, 4)
    logprobs = [lp for c in got["stop"] for lp in c.new_logprobs]
    assert [lp.token_id for lp in logprobs] == stop_tokens
    for lp in logprobs:  # greedy: the chosen token is the most likely one
        assert len(lp.top) == 5 and lp.top[0] == (lp.token_id, lp.logprob)
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.logprob < 0.0


def test_admission_errors_are_typed_and_queue_nothing(make_engine):
    engine = make_engine(num_kv_blocks=4, max_waiting=2, max_num_seqs=4)  # a 64-token context
    assert engine.max_model_len == 64
    with pytest.raises(PromptTooLongError) as e:
        engine.add_request("long", [1] * 64, SamplingParams())
    assert (e.value.prompt_tokens, e.value.max_prompt_tokens) == (64, 63)
    with pytest.raises(PromptTooLongError):
        engine.add_request("min", [1] * 60, SamplingParams(min_tokens=5, max_tokens=5))
    with pytest.raises(InvalidRequestError):
        engine.add_request("vocab", [1, 49152], SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request("empty", [], SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request("bias", [1], SamplingParams(logit_bias={-1: 1.0}))
    with pytest.raises(InvalidRequestError):
        engine.add_request("n", [1], SamplingParams(n=5))
    engine.add_request("a", [1, 2], SamplingParams())
    with pytest.raises(DuplicateRequestError):
        engine.add_request("a", [1, 2], SamplingParams())
    engine.add_request("b", [1, 2], SamplingParams())
    with pytest.raises(EngineOverloadedError):
        engine.add_request("c", [1, 2], SamplingParams())
    assert engine.num_requests == 2 and engine.stats().waiting == 2
