"""Random traffic through the scheduler and block manager (no model: tokens are drawn at
random), checking the bookkeeping invariants after every step."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from chatforge.engine.block_manager import BlockManager
from chatforge.engine.errors import EngineOverloadedError
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.scheduler import Scheduler
from chatforge.engine.sequence import Sequence, SequenceStatus

BLOCK = 4


def check_invariants(s: Scheduler, live: list[Sequence]) -> None:
    bm = s.block_manager
    refs = Counter(b for seq in live for b in seq.block_table)
    for block_id in range(bm.num_blocks):
        assert bm.ref_count(block_id) == refs[block_id], f"block {block_id}"
    assert bm.num_used_blocks == len(refs)
    assert set(bm.free_block_ids()).isdisjoint(refs)
    for seq in s.running:
        assert seq.status is SequenceStatus.RUNNING
        assert len(seq.block_table) * BLOCK >= seq.num_computed_tokens
        assert seq.num_uncomputed >= 1  # a running sequence always has a token to compute
    for seq in s.waiting:
        assert seq.status is SequenceStatus.WAITING and seq.block_table == [] and seq.num_computed_tokens == 0
    assert len(s.running) + sum(len(x.pending_forks) for x in s.running) <= s.max_num_seqs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_blocks=st.integers(6, 24), budget=st.integers(8, 40))
def test_random_traffic_keeps_the_books_straight(seed, num_blocks, budget):
    rng = random.Random(seed)
    s = Scheduler(
        BlockManager(num_blocks, BLOCK),
        max_num_seqs=8,
        max_num_batched_tokens=budget,
        max_waiting=6,
        max_model_len=num_blocks * BLOCK,
        stop_token_ids=frozenset({2}),
    )
    requests: dict[str, list[Sequence]] = {}
    shared_prefix = [rng.randrange(3, 50) for _ in range(8)]
    for step in range(80):
        if rng.random() < 0.4:
            n = rng.choice([1, 1, 2, 3])
            prompt = (shared_prefix if rng.random() < 0.5 else []) + [rng.randrange(3, 50) for _ in range(rng.randrange(1, 12))]
            params = SamplingParams(max_tokens=rng.randrange(1, 12), n=n)
            parent = Sequence(f"r{step}", prompt, params)
            forks = parent.attach_forks()
            try:
                s.add(parent)
                requests[parent.request_id] = [parent, *forks]
            except EngineOverloadedError:
                pass
        if requests and rng.random() < 0.1:
            victim = rng.choice(sorted(requests))
            s.finish_seqs(requests.pop(victim), FinishReason.ABORT)
        batch = s.schedule()
        s.update(batch, [rng.choice([2, 5, 6, 7, 8, 9]) for _ in batch.sample_seqs])
        for request_id in [r for r, seqs in requests.items() if all(x.is_finished for x in seqs)]:
            del requests[request_id]
        check_invariants(s, [x for seqs in requests.values() for x in seqs])
    for seqs in list(requests.values()):
        s.finish_seqs(seqs, FinishReason.ABORT)
    assert s.block_manager.num_used_blocks == 0 and not s.has_unfinished()
