"""The engine's grammar hook with a scripted matcher (the llguidance one is tested end to end in
test_constrained_decoding.py): the mask arithmetic, where it sits in the sampling order, what it
leaves untouched, and how a grammar ends a sequence."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from chatforge.engine.grammar import accept_token, grammar_error
from chatforge.engine.grammar_mask import GrammarMasks
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampler import Sampler, apply_penalties
from chatforge.engine.sampling_batch import SamplingBatch
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.sequence import Sequence
from chatforge.models import native

V = 300  # not a multiple of 32: the last mask word is partly padding
EOS = 2
CPU = torch.device("cpu")


class SetFiller:
    """Writes each matcher's allowed set as bits, the way a grammar library does."""

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def fill(self, items, bitmask):
        self.calls += 1
        self.rows += len(items)
        for matcher, k in items:
            bits = np.zeros(bitmask.shape[1] * 32, dtype=np.uint8)
            bits[sorted(matcher.allowed())] = 1
            bitmask[k] = np.packbits(bits, bitorder="little").view(np.int32)


class ScriptedMatcher:
    """Allows `script[i]` at step i; finished after the last step (or on EOS when it is allowed)."""

    def __init__(self, script, filler):
        self.script, self.mask_filler, self.taken, self._error = script, filler, [], ""

    def allowed(self):
        return self.script[len(self.taken)] if len(self.taken) < len(self.script) else {EOS}

    def allows(self, token_id):
        return token_id in self.allowed()

    def accept(self, token_id):
        if token_id not in self.allowed():
            self._error = f"token {token_id} is not allowed"
            return False
        self.taken.append(token_id)
        return True

    def is_finished(self):
        return len(self.taken) >= len(self.script) or (self.taken and self.taken[-1] == EOS)

    def error(self):
        return self._error


class ScriptedGrammar:
    vocab_size = V

    def __init__(self, script, filler=None):
        self.script, self.filler = script, filler or SetFiller()

    def matcher(self):
        return ScriptedMatcher(self.script, self.filler)


def logits_for(rows, seed=0):
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def seq(params, prompt=(1, 5, 9)):
    return Sequence("r", list(prompt), params)


@pytest.fixture(params=["torch", "native"])
def kernels(request):
    """The masks' two implementations: torch's lookup table, chatforge's C loop."""
    return native.library() if request.param == "native" else None


def test_the_mask_is_exact_and_touches_only_constrained_rows(kernels):
    filler = SetFiller()
    allowed = [{0, 31, 32, 33, 255, 299}, set(range(100, 140))]
    seqs = [seq(SamplingParams(grammar=ScriptedGrammar([allowed[0]], filler))), seq(SamplingParams()),
            seq(SamplingParams(grammar=ScriptedGrammar([allowed[1]], filler)))]
    logits = logits_for(3)
    masked = logits.clone()
    GrammarMasks(V, CPU, kernels).fill(seqs).apply(masked)
    assert filler.calls == 1  # both constrained rows in one call
    assert torch.equal(masked[1], logits[1])
    for row, ok in ((0, allowed[0]), (2, allowed[1])):
        expected = torch.full((V,), float("-inf"))
        expected[sorted(ok)] = logits[row, sorted(ok)]
        assert torch.equal(masked[row], expected)


def test_without_constrained_rows_nothing_is_filled():
    assert GrammarMasks(V, CPU).fill([seq(SamplingParams()), seq(SamplingParams())]) is None


def test_unconstrained_rows_sample_the_same_tokens_and_logprobs_beside_a_constrained_row():
    free = [SamplingParams(temperature=0, logprobs=True, top_logprobs=3), SamplingParams(seed=4, logprobs=True)]
    logits = logits_for(3, seed=5)
    out_alone = Sampler(V, frozenset({EOS}), CPU, seed=0)(logits[:2], [seq(p) for p in free])
    constrained = seq(SamplingParams(temperature=0, logprobs=True, grammar=ScriptedGrammar([{7}])))
    out_mixed = Sampler(V, frozenset({EOS}), CPU, seed=0)(logits, [*(seq(p) for p in free), constrained])
    assert out_mixed.token_ids[:2] == out_alone.token_ids
    assert out_mixed.logprobs[:2] == out_alone.logprobs
    assert out_mixed.token_ids[2] == 7


def test_a_constrained_row_keeps_the_raw_logprobs_and_a_bias_cannot_revive_a_forbidden_token():
    logits = logits_for(1, seed=1)
    favourite = int(logits[0].argmax())
    allowed = {(favourite + 1) % V, (favourite + 2) % V}
    for bias in (100.0, math.inf):
        params = SamplingParams(temperature=0, logprobs=True, logit_bias={favourite: bias}, grammar=ScriptedGrammar([allowed]))
        out = Sampler(V, frozenset({EOS}), CPU, seed=0)(logits, [seq(params)])
        token = out.token_ids[0]
        assert token in allowed
        assert out.logprobs[0].logprob == logits[0].log_softmax(-1)[token].item()  # step 1: raw


def test_a_sampled_row_draws_only_allowed_tokens():
    sampler = Sampler(V, frozenset({EOS}), CPU, seed=0)
    allowed = {3, 50, 299}
    s = seq(SamplingParams(temperature=1.5, top_p=0.9, grammar=ScriptedGrammar([allowed] * 200)))
    for step in range(200):
        token = sampler(logits_for(1, seed=step), [s]).token_ids[0]
        assert token in allowed


def test_a_finished_grammar_ends_the_sequence_even_with_ignore_eos_and_min_tokens():
    s = seq(SamplingParams(max_tokens=10, min_tokens=8, ignore_eos=True, grammar=ScriptedGrammar([{5}, {6}])))
    s.append_token(5)
    assert not accept_token(s, 5, frozenset({EOS}))
    s.append_token(6)
    assert accept_token(s, 6, frozenset({EOS}))
    assert s.finish_reason is FinishReason.STOP and s.stop_token_id is None  # 6 is part of the text


def test_a_grammar_that_ends_on_eos_ends_with_that_stop_id():
    s = seq(SamplingParams(ignore_eos=True, grammar=ScriptedGrammar([{5, EOS}])))
    assert accept_token(s, EOS, frozenset({EOS}))
    assert s.finish_reason is FinishReason.STOP and s.stop_token_id == EOS


def test_a_refused_token_ends_the_sequence_with_the_grammars_message():
    s = seq(SamplingParams(grammar=ScriptedGrammar([{5}])))
    assert accept_token(s, 9, frozenset({EOS}))
    assert s.finish_reason is FinishReason.GRAMMAR_ERROR
    assert grammar_error(s) == "token 9 is not allowed"


def test_each_completion_of_a_request_starts_its_own_matcher():
    parent = seq(SamplingParams(n=2, grammar=ScriptedGrammar([{5}])))
    child = parent.fork(1)
    assert child.matcher is not parent.matcher
    parent.matcher.accept(5)
    assert child.matcher.taken == []


def test_both_masks_agree_on_a_real_vocabulary_with_an_infinite_bias(kernels):
    """49,152 tokens, words all allowed, all forbidden and mixed, rows out of order, and a
    constrained row whose bias is +inf on a forbidden token: the grammar wins."""
    vocab, words = 49_155, (49_155 + 31) // 32
    rng = np.random.default_rng(3)
    bitmask = rng.integers(-2**31, 2**31, size=(3, words), dtype=np.int64).astype(np.int32)
    bitmask[0, ::3], bitmask[1, ::5] = -1, 0  # all 32 allowed / all forbidden
    logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(1))
    logits[4, 7] = float("inf")
    bitmask[2, 0] &= ~(1 << 7)
    from chatforge.engine.grammar_mask import StepMasks, _lookup_table

    rows = torch.tensor([3, 0, 4])
    reference, masked = logits.clone(), logits.clone()
    StepMasks(rows, torch.from_numpy(bitmask), _lookup_table(torch.float32, CPU), True).apply(reference)
    StepMasks(rows, torch.from_numpy(bitmask), _lookup_table(torch.float32, CPU), True, kernels).apply(masked)
    assert torch.equal(masked, reference)
    assert masked[4, 7] == float("-inf") and torch.equal(masked[[1, 2]], logits[[1, 2]])
    allowed = np.unpackbits(bitmask[1].view(np.uint8), bitorder="little")[:vocab].astype(bool)
    assert torch.equal(torch.isinf(masked[0]), torch.from_numpy(~allowed))


def test_greedy_rows_are_masked_only_where_the_grammar_refuses_their_argmax_with_the_same_tokens(kernels):
    """Against the plain order (every constrained row masked before the argmax): biases, an
    infinite one on a forbidden token, min_tokens bans and penalties, rows whose own argmax the
    grammar allows and rows where it does not."""
    logits = logits_for(6, seed=7)
    top = logits.argmax(dim=-1).tolist()
    filler = SetFiller()
    allowed = [
        {top[0], 5, 6},  # allows the argmax
        {2, 3, 40},  # refuses it (a +inf bias on 1)
        set(range(V)) - {top[2]},  # refuses only it
        {top[3], 9},
        {11, 12},
        {EOS, 17, 200},
    ]
    params = [
        SamplingParams(temperature=0, logit_bias={5: 1.0}),
        SamplingParams(temperature=0, logit_bias={1: math.inf, 3: 2.0}, logprobs=True),
        SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5),
        SamplingParams(temperature=0, logprobs=True, top_logprobs=2),
        SamplingParams(temperature=0, logit_bias={top[4]: math.inf}),  # +inf on a forbidden token: the grammar wins
        SamplingParams(temperature=0, min_tokens=3),  # EOS banned though the grammar allows it
    ]
    seqs = [seq(replace(p, grammar=ScriptedGrammar([ok], filler)), prompt=(1, 17, 17, 9)) for p, ok in zip(params, allowed)]
    sampler = Sampler(V, frozenset({EOS}), CPU, seed=0)
    sampler.grammar_masks = GrammarMasks(V, CPU, kernels)
    out = sampler(logits, seqs)

    b = SamplingBatch.build(seqs, V, frozenset({EOS}), CPU, sampler.history)
    unmasked = apply_penalties(logits, b).argmax(dim=-1).tolist()
    refused = [i for i, (t, ok) in enumerate(zip(unmasked, allowed)) if t not in ok]
    assert refused == [1, 2, 4, 5] and filler.rows == len(refused)  # only they were masked
    everything = apply_penalties(logits, b, GrammarMasks(V, CPU, kernels).fill(seqs))
    assert out.token_ids == everything.argmax(dim=-1).tolist()
    assert all(t in ok for t, ok in zip(out.token_ids, allowed))
    assert out.token_ids[0] == top[0]
    for row in (1, 3):  # a redone row's logprob is its final token's, raw
        assert out.logprobs[row].token_id == out.token_ids[row]
        assert out.logprobs[row].logprob == logits[row].log_softmax(-1)[out.token_ids[row]].item()


def test_no_mask_is_filled_when_every_greedy_argmax_is_allowed():
    logits = logits_for(4, seed=2)
    filler = SetFiller()
    top = logits.argmax(dim=-1).tolist()
    seqs = [seq(SamplingParams(temperature=0, grammar=ScriptedGrammar([{t, 0}], filler))) for t in top]
    out = Sampler(V, frozenset({EOS}), CPU, seed=0)(logits, seqs)
    assert out.token_ids == top and filler.calls == 0
