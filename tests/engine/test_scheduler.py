"""Scheduler scenarios with tiny numbers and exact block ids (block_size 4, EOS id 2).

No model runs here: each test plays the runner's part by handing `update` the sampled tokens.
"""

from __future__ import annotations

import pytest

from chatforge.engine.block_manager import BlockManager
from chatforge.engine.errors import EngineOverloadedError
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.scheduler import Scheduler
from chatforge.engine.sequence import Sequence, SequenceStatus

EOS = 2


def make_scheduler(num_blocks=8, budget=64, max_num_seqs=8, max_waiting=8, max_model_len=64):
    return Scheduler(
        BlockManager(num_blocks, block_size=4),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_waiting=max_waiting,
        max_model_len=max_model_len,
        stop_token_ids=frozenset({EOS}),
    )


def make_seq(tokens, **params) -> Sequence:
    return Sequence(f"r{tokens[0]}", list(tokens), SamplingParams(**params))


def test_long_prompt_is_prefilled_in_chunks_beside_a_newcomer():
    s = make_scheduler(budget=6)
    a = make_seq(range(10, 24))  # 14 tokens
    s.add(a)
    b1 = s.schedule()
    assert (b1.num_new_tokens, b1.sample_indices, a.block_table) == ([6], [], [0, 1])
    s.update(b1, [])
    b = make_seq([50, 51, 52])
    s.add(b)
    b2 = s.schedule()  # a takes the whole budget: b waits
    assert (b2.seqs, b2.num_new_tokens, a.block_table) == ([a], [6], [0, 1, 2])
    s.update(b2, [])
    b3 = s.schedule()  # a's last 2 tokens, then b's 3 fit in the budget of 6
    assert (b3.seqs, b3.num_new_tokens, b3.sample_indices) == ([a, b], [2, 3], [0, 1])
    assert (a.block_table, b.block_table) == ([0, 1, 2, 3], [4])
    s.update(b3, [99, 98])
    assert (a.token_ids[-1], a.num_computed_tokens, b.num_computed_tokens) == (99, 14, 3)
    b4 = s.schedule()
    assert (b4.num_new_tokens, b4.sample_indices) == ([1, 1], [0, 1])


def test_prefix_hit_at_admission_is_counted():
    s = make_scheduler()
    a = make_seq([1, 3, 4, 5, 6, 7, 8, 9, 10])
    s.add(a)
    s.update(s.schedule(), [11])
    b = make_seq([1, 3, 4, 5, 6, 7, 8, 9, 10])
    s.add(b)
    batch = s.schedule()
    assert (batch.seqs, batch.num_new_tokens) == ([a, b], [1, 1])
    assert b.block_table == [0, 1, 3]  # shares a's two full blocks
    assert (b.num_cached_tokens, s.num_prefix_cache_hit_tokens, s.num_prefix_cache_queried_tokens) == (8, 8, 18)


def test_newest_sequence_is_preempted_and_recomputed_when_blocks_run_out():
    s = make_scheduler(num_blocks=4)
    a = make_seq(range(10, 17), max_tokens=4)
    b = make_seq(range(20, 27), max_tokens=10)
    s.add(a)
    s.add(b)
    batch = s.schedule()
    assert (a.block_table, b.block_table) == ([0, 1], [2, 3])
    s.update(batch, [30, 40])
    s.update(s.schedule(), [31, 41])  # 9 tokens each, 8 computed: both need a third block
    batch = s.schedule()
    assert (batch.seqs, batch.preempted, s.num_preemptions) == ([a], [b], 1)
    # b was freed last block first; both its blocks were full and cached, so both went to the
    # back: block 3 first, and a took it (evicting it from the prefix cache).
    assert a.block_table == [0, 1, 3]
    assert (b.status, b.block_table, b.num_computed_tokens, list(s.waiting)) == (SequenceStatus.WAITING, [], 0, [b])
    s.update(batch, [32])
    batch = s.schedule()  # b's cached block 2 is free, but it needs 2 more: it keeps waiting
    assert (batch.seqs, list(s.waiting)) == ([a], [b])
    s.update(batch, [33])
    assert (a.finish_reason, a.block_table) == (FinishReason.LENGTH, [])
    batch = s.schedule()  # b recomputes prompt + generated, reusing its cached first block
    assert (batch.seqs, batch.num_new_tokens, batch.sample_indices) == ([b], [5], [0])
    assert b.block_table == [2, 3, 1]
    assert (b.num_cached_tokens, s.num_prefix_cache_hit_tokens) == (0, 4)
    s.update(batch, [42])
    assert b.token_ids == [*range(20, 27), 40, 41, 42]


def test_abort_frees_every_block_of_running_waiting_and_pending_sequences():
    s = make_scheduler(num_blocks=8, max_num_seqs=3)
    a = make_seq(range(10, 19))
    b = make_seq(range(20, 25))
    c = make_seq(range(30, 35), n=2)
    (fork,) = c.attach_forks()
    for x in (a, b, c):
        s.add(x)
    s.update(s.schedule(), [11, 21])  # c (with its fork, 2 seqs) does not fit max_num_seqs=3
    assert (len(s.running), list(s.waiting)) == (2, [c])
    assert s.block_manager.num_used_blocks == 5
    s.finish_seqs([a, b, c, fork], FinishReason.ABORT)
    assert (s.running, list(s.waiting), s.block_manager.num_used_blocks) == ([], [], 0)
    assert {x.finish_reason for x in (a, b, c, fork)} == {FinishReason.ABORT}
    assert not s.has_unfinished()
    assert s.block_manager.cached_block_ids() == {0, 1, 3}  # computed full blocks stay reusable


def test_forks_share_the_prompt_and_sample_from_the_parents_logits():
    s = make_scheduler()
    parent = make_seq(range(10, 16), n=3)  # 6 tokens: one full block and a partial one
    forks = parent.attach_forks()
    s.add(parent)
    batch = s.schedule()
    assert (batch.sample_indices, batch.sample_seqs, batch.logits_rows) == ([0], [parent, *forks], [0, 0, 0])
    s.update(batch, [5, 6, 7])
    assert [f.block_table for f in forks] == [[0], [0]]
    assert [x.token_ids[-1] for x in (parent, *forks)] == [5, 6, 7]
    batch = s.schedule()  # each fork recomputes tokens 4, 5 and its own first token
    assert (batch.seqs, batch.num_new_tokens) == ([parent, *forks], [1, 3, 3])
    assert [x.block_table for x in (parent, *forks)] == [[0, 1], [0, 2], [0, 3]]
    assert s.block_manager.ref_count(0) == 3


def test_finish_reasons_on_token_ids():
    s = make_scheduler(max_model_len=8)
    eos = make_seq([10, 11])
    ignored = make_seq([20, 21], ignore_eos=True)
    custom = make_seq([30, 31], stop_token_ids=[7])
    ctx = make_seq([40, 41, 42, 43, 44, 45, 46], max_tokens=100)
    for x in (eos, ignored, custom, ctx):
        s.add(x)
    s.update(s.schedule(), [EOS, EOS, 7, 9])
    assert (eos.finish_reason, eos.stop_token_id) == (FinishReason.STOP, EOS)
    assert (custom.finish_reason, custom.stop_token_id) == (FinishReason.STOP, 7)
    assert ctx.finish_reason is FinishReason.LENGTH  # 8 tokens: the context is full
    assert ignored.finish_reason is None and s.running == [ignored]


def test_a_full_waiting_queue_refuses_new_sequences():
    s = make_scheduler(max_waiting=2)
    s.add(make_seq([1]))
    s.add(make_seq([3]))
    with pytest.raises(EngineOverloadedError):
        s.add(make_seq([4]))


def test_max_num_seqs_bounds_the_running_set():
    s = make_scheduler(max_num_seqs=2)
    seqs = [make_seq([i, i + 1]) for i in (10, 20, 30)]
    for x in seqs:
        s.add(x)
    batch = s.schedule()
    assert (batch.seqs, list(s.waiting)) == (seqs[:2], seqs[2:])
