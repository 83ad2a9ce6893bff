"""The sampler as a whole: fast paths, draws, seeds, batch invariance and raw logprobs."""

from __future__ import annotations

import torch

from chatforge.engine.sampler import Sampler
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.sequence import Sequence

V = 512
EOS = 2
CPU = torch.device("cpu")


def random_logits(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 2.0


def seq(params: SamplingParams, prompt=(1, 5, 9), index: int = 0) -> Sequence:
    return Sequence("r", list(prompt), params, index)


def test_greedy_rows_take_the_argmax_of_the_raw_logits():
    logits = random_logits(3, seed=0)
    out = Sampler(V, frozenset({EOS}), CPU, seed=0)(logits, [seq(SamplingParams(temperature=0))] * 3)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None, None, None]


def test_the_draw_follows_the_filtered_distribution():
    logits = torch.full((1, V), -30.0)
    logits[0, [7, 8, 9]] = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    sampler = Sampler(V, frozenset({EOS}), CPU, seed=123)
    s = seq(SamplingParams(top_k=3))
    counts = {7: 0, 8: 0, 9: 0}
    for _ in range(3000):
        counts[sampler(logits, [s]).token_ids[0]] += 1  # a KeyError would mean a filtered token
    assert abs(counts[7] / 3000 - 0.5) < 0.03
    assert abs(counts[8] / 3000 - 0.3) < 0.03
    assert abs(counts[9] / 3000 - 0.2) < 0.03


def draws(sampler: Sampler, seqs: list[Sequence], steps: int) -> list[list[int]]:
    """Tokens per step, appending each draw to its sequence as the engine would."""
    out = []
    for step in range(steps):
        tokens = sampler(random_logits(len(seqs), seed=100 + step), seqs).token_ids
        for s, t in zip(seqs, tokens):
            s.append_token(t)
        out.append(tokens)
    return out


def test_a_seeded_request_repeats_and_another_seed_differs():
    a = draws(Sampler(V, frozenset({EOS}), CPU), [seq(SamplingParams(seed=7, temperature=1.5))], steps=12)
    b = draws(Sampler(V, frozenset({EOS}), CPU), [seq(SamplingParams(seed=7, temperature=1.5))], steps=12)
    c = draws(Sampler(V, frozenset({EOS}), CPU), [seq(SamplingParams(seed=8, temperature=1.5))], steps=12)
    assert a == b
    assert a != c


def test_each_row_of_a_mixed_batch_gets_what_it_would_get_alone():
    params = [
        SamplingParams(temperature=0, repetition_penalty=1.3),
        SamplingParams(seed=1, temperature=0.8, top_k=40, top_p=0.9),
        SamplingParams(seed=2, temperature=1.2, min_p=0.1, frequency_penalty=0.5, presence_penalty=0.3),
        SamplingParams(temperature=0.9, typical_p=0.8, logit_bias={3: 2.0}),  # unseeded: the shared generator
        SamplingParams(seed=3, n=2, logprobs=True, top_logprobs=4),
        SamplingParams(temperature=0, min_tokens=3, max_tokens=5, logprobs=True),
    ]
    steps = 6
    batch_seqs = [seq(p, index=1 if p.n == 2 else 0) for p in params]
    together = draws(Sampler(V, frozenset({EOS}), CPU, seed=99), batch_seqs, steps)
    for row, p in enumerate(params):
        # Alone, the row sees the logits it saw in the batch (row `row` of each step's tensor).
        alone_seq = seq(p, index=batch_seqs[row].index)
        sampler = Sampler(V, frozenset({EOS}), CPU, seed=99)
        for step in range(steps):
            logits = random_logits(len(params), seed=100 + step)[row : row + 1]
            token = sampler(logits, [alone_seq]).token_ids[0]
            alone_seq.append_token(token)
            assert token == together[step][row], f"row {row} step {step}"


def test_completions_of_one_seeded_request_draw_differently():
    a = draws(Sampler(V, frozenset({EOS}), CPU), [seq(SamplingParams(seed=5, n=2), index=0)], steps=8)
    b = draws(Sampler(V, frozenset({EOS}), CPU), [seq(SamplingParams(seed=5, n=2), index=1)], steps=8)
    assert a != b


def test_logprobs_are_raw_whatever_the_processing():
    logits = random_logits(2, seed=3)
    params = SamplingParams(temperature=0.5, repetition_penalty=2.0, logit_bias={0: 50.0}, logprobs=True, top_logprobs=3)
    seqs = [seq(params), seq(SamplingParams(temperature=0))]
    out = Sampler(V, frozenset({EOS}), CPU, seed=1)(logits, seqs)
    raw = logits[0].log_softmax(dim=-1)
    lp = out.logprobs[0]
    assert lp.token_id == out.token_ids[0] == 0  # the +50 bias decides the draw...
    assert lp.logprob == raw[0].item()  # ...but the logprob is the model's own
    top = raw.topk(3)
    assert lp.top == list(zip(top.indices.tolist(), top.values.tolist()))
    assert out.logprobs[1] is None


def test_degenerate_rows_still_get_a_token_of_the_vocabulary():
    logits = random_logits(3, seed=4)
    seqs = [
        seq(SamplingParams(temperature=0.7, logit_bias={11: float("inf")})),  # softmax is NaN
        seq(SamplingParams(temperature=1e-300)),  # below the greedy threshold: argmax
        seq(SamplingParams(temperature=0.9, seed=3)),
    ]
    out = Sampler(V, frozenset({EOS}), CPU, seed=0)(logits, seqs)
    assert out.token_ids[:2] == [11, int(logits[1].argmax())]
    assert 0 <= out.token_ids[2] < V
