"""Each sampling step against transformers' logits processors and warpers, on random logits.

Every batched op runs over rows with different parameters (and rows where it is off); each row
must equal, bit for bit, what the transformers class gives for that row alone.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from chatforge.engine import sampling_ops as ops
from chatforge.engine.sampler import apply_filters, apply_penalties
from chatforge.engine.sampling_batch import FilterParams, SamplingBatch
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.sequence import Sequence

V = 512
EOS = 2


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, V, generator=g) * 3.0


def flags(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def assert_rows_equal(got: torch.Tensor, expected_rows: list[torch.Tensor]) -> None:
    for i, expected in enumerate(expected_rows):
        assert torch.equal(got[i], expected), f"row {i} differs"


def test_temperature():
    logits = random_logits(4)
    temps = [0.3, 1.0, 1.7, 0.05]
    got = ops.temperature(logits, torch.tensor(temps))
    assert_rows_equal(got, [TemperatureLogitsWarper(t)(None, logits[i : i + 1])[0] for i, t in enumerate(temps)])


def test_top_k():
    logits = random_logits(5, seed=1)
    ks = [1, 5, 0, 40, V + 10]  # 0 = off; more than the vocabulary keeps all
    got = ops.top_k(logits, torch.tensor([min(k, V) or V for k in ks]), flags([k > 0 for k in ks]))
    expected = [logits[i] if k == 0 else TopKLogitsWarper(k)(None, logits[i : i + 1])[0] for i, k in enumerate(ks)]
    assert_rows_equal(got, expected)
    assert [int(torch.isfinite(r).sum()) for r in got] == [1, 5, V, 40, V]


def test_top_p():
    logits = random_logits(4, seed=2)
    ps = [0.9, 1.0, 0.3, 0.001]
    got = ops.top_p(logits, torch.tensor([1.0 - p for p in ps]), flags([p < 1 for p in ps]))
    expected = [logits[i] if p == 1 else TopPLogitsWarper(p)(None, logits[i : i + 1])[0] for i, p in enumerate(ps)]
    assert_rows_equal(got, expected)
    assert int(torch.isfinite(got[3]).sum()) == 1  # a tiny top_p still keeps the best token


def test_min_p():
    logits = random_logits(4, seed=3)
    ps = [0.05, 0.0, 0.5, 1.0]
    got = ops.min_p(logits, torch.tensor(ps), flags([p > 0 for p in ps]))
    expected = [logits[i] if p == 0 else MinPLogitsWarper(p)(None, logits[i : i + 1])[0] for i, p in enumerate(ps)]
    assert_rows_equal(got, expected)


def test_typical_p():
    logits = random_logits(4, seed=4)
    ps = [0.9, 1.0, 0.2, 0.001]
    got = ops.typical_p(logits, torch.tensor(ps), flags([p < 1 for p in ps]))
    expected = [logits[i] if p == 1 else TypicalLogitsWarper(p)(None, logits[i : i + 1])[0] for i, p in enumerate(ps)]
    assert_rows_equal(got, expected)
    assert int(torch.isfinite(got[3]).sum()) == 1


def test_repetition_penalty_over_prompt_and_generated():
    logits = random_logits(3, seed=5)
    histories = [[5, 9, 9, 100, 7], [1, 2], [300, 301, 5, 5, 5, 42, 17, 255]]
    penalties = [1.3, 1.0, 0.7]
    rows = torch.tensor([i for i, h in enumerate(histories) for _ in h])
    cols = torch.tensor([t for h in histories for t in h])
    got = ops.repetition_penalty(logits, ops.token_mask(3, V, rows, cols), torch.tensor(penalties))
    expected = [
        RepetitionPenaltyLogitsProcessor(r)(torch.tensor([h]), logits[i : i + 1])[0]
        for i, (h, r) in enumerate(zip(histories, penalties))
    ]
    assert_rows_equal(got, expected)


def test_frequency_and_presence_follow_the_openai_formula():
    logits = random_logits(2, seed=6)
    generated = [[4, 4, 4, 10, 11, 11], [7]]
    freq, pres = [0.5, -1.25], [0.75, 2.0]  # exactly representable: the formula is exact in float32
    rows = torch.tensor([i for i, g in enumerate(generated) for _ in g])
    cols = torch.tensor([t for g in generated for t in g])
    got = ops.frequency_presence_penalty(logits, ops.token_counts(2, V, rows, cols), torch.tensor(freq), torch.tensor(pres))
    for i, g in enumerate(generated):
        expected = logits[i].clone()
        for token in set(g):
            count = g.count(token)
            expected[token] = logits[i][token].item() - count * freq[i] - 1.0 * pres[i]
        assert torch.equal(got[i], expected)


def make_seqs(specs: list[tuple[list[int], list[int], SamplingParams]]) -> list[Sequence]:
    seqs = []
    for prompt, generated, params in specs:
        s = Sequence("r", prompt, params)
        s.token_ids.extend(generated)
        seqs.append(s)
    return seqs


COMBINED = [
    ([3, 8, 8, 21], [40, 41], SamplingParams(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, typical_p=0.95, repetition_penalty=1.2)),
    ([5, 6], [6], SamplingParams(temperature=1.3, top_p=0.8, repetition_penalty=0.9)),
    ([7], [], SamplingParams(top_k=3)),
    ([9, 10, 11], [12, 12], SamplingParams(temperature=0.5, min_p=0.2, typical_p=0.5)),
    ([1], [2, 3], SamplingParams()),
]


def test_combined_steps_match_a_transformers_processor_list_row_by_row():
    logits = random_logits(len(COMBINED), seed=7)
    seqs = make_seqs(COMBINED)
    b = SamplingBatch.build(seqs, V, frozenset({EOS}), torch.device("cpu"))
    got = apply_filters(apply_penalties(logits, b), b.filters)
    for i, (prompt, generated, p) in enumerate(COMBINED):
        chain = LogitsProcessorList()
        if p.repetition_penalty != 1:
            chain.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
        if p.temperature != 1:
            chain.append(TemperatureLogitsWarper(p.temperature))
        if p.top_k:
            chain.append(TopKLogitsWarper(p.top_k))
        if p.top_p < 1:
            chain.append(TopPLogitsWarper(p.top_p))
        if p.min_p:
            chain.append(MinPLogitsWarper(p.min_p))
        if p.typical_p < 1:
            chain.append(TypicalLogitsWarper(p.typical_p))
        expected = chain(torch.tensor([prompt + generated]), logits[i : i + 1].clone())[0]
        assert torch.equal(got[i], expected), f"row {i} differs"


def test_logit_bias_then_min_tokens_ban():
    logits = random_logits(3, seed=8)
    seqs = make_seqs([
        ([1], [], SamplingParams(logit_bias={10: 5.0, 11: -100.0, EOS: 3.0}, min_tokens=2, max_tokens=4)),
        ([1], [20, 21], SamplingParams(min_tokens=2, max_tokens=4, stop_token_ids=[30])),  # min reached
        ([1], [20], SamplingParams(min_tokens=2, max_tokens=4, stop_token_ids=[30], ignore_eos=True)),
    ])
    b = SamplingBatch.build(seqs, V, frozenset({EOS}), torch.device("cpu"))
    got = apply_penalties(logits, b)
    expected = logits.clone()
    expected[0, 10] += 5.0
    expected[0, 11] += -100.0
    expected[0, EOS] = float("-inf")  # banned after the bias
    expected[2, 30] = float("-inf")  # ignore_eos: only the request's own stop ids are banned
    assert torch.equal(got, expected)


def test_filters_skip_rows_at_their_defaults():
    f = FilterParams.build(make_seqs([([1], [], SamplingParams()), ([1], [], SamplingParams(top_p=0.5))]), V, torch.device("cpu"))
    assert (f.temperature, f.top_k, f.min_p, f.typical_p) == (None, None, None, None)
    assert f.top_p_active.tolist() == [False, True]
    assert f.top_p.tolist() == pytest.approx([0.0, 0.5])


def test_inverse_cdf_draws_only_tokens_with_probability():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4)
    u = torch.tensor([0.0, 0.5, 0.49, 1.0 - 2.0**-53], dtype=torch.float64)  # x = (1 - u) * total
    assert ops.inverse_cdf(probs, u).tolist() == [3, 1, 3, 1]
    one_hot = torch.zeros(2, V)
    one_hot[:, 7] = 1.0
    assert ops.inverse_cdf(one_hot, torch.tensor([0.0, 0.999], dtype=torch.float64)).tolist() == [7, 7]


def test_inverse_cdf_marks_rows_without_a_distribution():
    probs = torch.tensor([[float("nan"), 0.5], [0.0, 0.0], [0.2, 0.8]])
    assert ops.inverse_cdf(probs, torch.tensor([0.3, 0.3, 0.5], dtype=torch.float64)).tolist() == [-1, -1, 1]
