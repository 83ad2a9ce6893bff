"""Prompt logprobs (SamplingParams.prompt_logprobs, engine/prompt_logprobs.py) on the bundled
model (the default native backend): each prompt token's logprob given the ones before it, equal to
one plain forward pass over the whole prompt, whether the prompt is prefilled at once or in
chunks, cached or not, with n completions; handed out once, with the first output."""

from __future__ import annotations

import pytest
import torch

from chatforge.engine.sampling_params import SamplingParams
from chatforge.models.step import StepInputs


@pytest.fixture(scope="module")
def reference(smollm):
    """log_softmax of one forward pass over the whole prompt, every row through the lm_head,
    without the engine."""

    @torch.inference_mode()
    def score(prompt: list[int]) -> torch.Tensor:
        cache = smollm.allocate_kv_cache(num_blocks=1, block_size=len(prompt))
        step = StepInputs(prompt, [len(prompt)], [len(prompt)], [[0]], list(range(len(prompt))))
        return smollm.execute(step, cache).log_softmax(dim=-1)  # [P, V]: row p scores token p + 1

    return score


def run(engine, prompt, params, request_id="r"):
    """Step a request to its end; its outputs."""
    engine.add_request(request_id, prompt, params)
    outs = []
    while engine.has_unfinished():
        outs.extend(o for o in engine.step() if o.request_id == request_id)
    return outs


def check_against(reference, prompt, scored, k):
    lp = reference(prompt)
    assert scored[0] is None and len(scored) == len(prompt)
    for p, s in enumerate(scored[1:]):
        assert s.token_id == prompt[p + 1]
        assert s.logprob == pytest.approx(float(lp[p, prompt[p + 1]]), abs=2e-4)
        top = lp[p].topk(k)
        assert [t for t, _ in s.top] == top.indices.tolist()
        assert [v for _, v in s.top] == pytest.approx(top.values.tolist(), abs=2e-4)


@pytest.mark.parametrize("budget", [512, 16])  # the whole prompt in one step, or in chunks of 16
def test_prompt_logprobs_equal_one_forward_pass(make_engine, prompts, reference, budget):
    engine = make_engine(max_num_batched_tokens=budget, max_num_seqs=16)
    prompt = prompts[0]  # 36 tokens: three chunks at a budget of 16
    assert len(prompt) > 2 * 16
    outs = run(engine, prompt, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=3))
    assert outs[0].prompt_logprobs is not None and all(o.prompt_logprobs is None for o in outs[1:])
    check_against(reference, prompt, outs[0].prompt_logprobs, 3)
    assert engine.stats().num_blocks_used == 0


def test_a_cached_prompt_is_computed_again_to_be_scored(make_engine, prompts, reference):
    engine = make_engine()
    prompt = prompts[5] + prompts[6]  # several full blocks
    run(engine, prompt, SamplingParams(temperature=0, max_tokens=1), "warm")  # now in the prefix cache
    hits = engine.stats().prefix_cache_hit_tokens
    outs = run(engine, prompt, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))
    assert engine.stats().prefix_cache_hit_tokens == hits  # no block taken from the cache
    assert outs[0].num_cached_tokens == 0
    check_against(reference, prompt, outs[0].prompt_logprobs, 0)


def test_n_completions_share_one_scored_prompt(make_engine, prompts, reference):
    engine = make_engine()
    prompt = prompts[1]
    outs = run(engine, prompt, SamplingParams(temperature=1.0, seed=1, max_tokens=3, n=2, prompt_logprobs=1))
    assert [o.prompt_logprobs is not None for o in outs] == [True] + [False] * (len(outs) - 1)
    assert sorted(c.index for c in outs[0].outputs) == [0, 1]
    check_against(reference, prompt, outs[0].prompt_logprobs, 1)


def test_requests_without_prompt_logprobs_get_none(make_engine, prompts):
    engine = make_engine()
    outs = run(engine, prompts[0], SamplingParams(temperature=0, max_tokens=2))
    assert all(o.prompt_logprobs is None for o in outs)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
