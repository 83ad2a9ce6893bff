"""Block manager scenarios with tiny numbers and exact block ids (block_size 4)."""

from __future__ import annotations

import pytest

from chatforge.engine.block_manager import BlockManager
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.sequence import Sequence


def seq(tokens: list[int]) -> Sequence:
    return Sequence("r", tokens, SamplingParams())


def computed(bm: BlockManager, tokens: list[int]) -> Sequence:
    """A sequence whose tokens were all allocated and computed, blocks offered to the cache."""
    s = seq(tokens)
    assert bm.allocate(s, len(tokens), bm.find_cached_prefix(s))
    s.num_computed_tokens = len(tokens)
    bm.register_computed_blocks(s)
    return s


def test_allocation_takes_blocks_from_the_front_and_grows_by_whole_blocks():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = seq(list(range(10)))
    assert bm.allocate(a, 10)
    assert a.block_table == [0, 1, 2]
    assert bm.free_block_ids() == [3, 4, 5]
    a.num_computed_tokens = 10
    assert bm.allocate(a, 2)  # tokens 10 and 11 still fit in block 2
    assert a.block_table == [0, 1, 2]
    a.num_computed_tokens = 12
    assert bm.allocate(a, 1)
    assert a.block_table == [0, 1, 2, 3]
    assert (bm.num_used_blocks, bm.usage) == (4, 4 / 6)


def test_allocation_is_all_or_nothing():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = seq(list(range(13)))
    assert not bm.allocate(a, 13)  # needs 4 blocks
    assert a.block_table == [] and bm.free_block_ids() == [0, 1, 2]


def test_prefix_hit_shares_full_computed_blocks_only():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = computed(bm, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # blocks 0, 1 full; block 2 partial
    assert a.block_table == [0, 1, 2]
    assert bm.cached_block_ids() == {0, 1}
    b = seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    hits = bm.find_cached_prefix(b)
    assert hits == [0, 1]
    assert bm.allocate(b, 3, hits)
    assert b.block_table == [0, 1, 3]
    assert b.num_computed_tokens == 8
    assert [bm.ref_count(i) for i in range(4)] == [2, 2, 1, 1]


def test_a_prefix_hit_leaves_the_last_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    computed(bm, [1, 2, 3, 4, 5, 6, 7, 8])
    # Same 8 tokens: the whole prompt is cached, but its last token must run to give logits.
    assert bm.find_cached_prefix(seq([1, 2, 3, 4, 5, 6, 7, 8])) == [0]
    assert bm.find_cached_prefix(seq([1, 2, 3, 4, 5, 6, 7, 8, 9])) == [0, 1]
    # The chain: an identical second block after a different first one is no hit.
    assert bm.find_cached_prefix(seq([0, 2, 3, 4, 5, 6, 7, 8, 9])) == []


def test_freed_cached_blocks_are_evicted_last_and_deepest_first():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = computed(bm, [1, 2, 3, 4, 5, 6, 7, 8, 9])  # blocks 0, 1 cached; 2 partial
    bm.free(a)
    # Uncached block 2 goes to the front; cached 1 then 0 to the back (1 freed first).
    assert bm.free_block_ids() == [2, 3, 4, 5, 1, 0]
    assert bm.num_used_blocks == 0 and bm.usage == 0.0
    c = seq(list(range(100, 120)))
    assert bm.allocate(c, 20)  # 5 blocks: evicts block 1, keeps block 0
    assert c.block_table == [2, 3, 4, 5, 1]
    assert bm.cached_block_ids() == {0}
    d = seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    hits = bm.find_cached_prefix(d)
    assert hits == [0]
    assert bm.allocate(d, 5, hits) is False  # block 0 revives, but 2 fresh blocks are missing
    bm.free(c)  # none of c's blocks is cached: all go to the front, c's first block foremost
    assert bm.free_block_ids() == [2, 3, 4, 5, 1, 0]
    assert bm.allocate(d, 5, hits)
    assert d.block_table == [0, 2, 3]  # block 0 taken out of the free list, still cached
    assert bm.free_block_ids() == [4, 5, 1]
    assert bm.cached_block_ids() == {0}


def test_a_block_with_duplicate_contents_is_not_cached_twice():
    bm = BlockManager(num_blocks=6, block_size=4)
    a, b = seq([1, 2, 3, 4, 5]), seq([1, 2, 3, 4, 6])
    assert bm.allocate(a, 5) and bm.allocate(b, 5)  # admitted in the same step: no hit
    for s in (a, b):
        s.num_computed_tokens = 5
        bm.register_computed_blocks(s)
    assert (a.block_table, b.block_table) == ([0, 1], [2, 3])
    assert bm.cached_block_ids() == {0}
    bm.free(b)
    assert bm.free_block_ids() == [2, 3, 4, 5]  # 2 is not cached: it is reused first


def test_fork_shares_full_prompt_blocks_and_recomputes_the_tail():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = computed(bm, list(range(10)))
    child = parent.fork(1)
    bm.fork(parent, child)
    assert child.block_table == [0, 1]
    assert child.num_computed_tokens == 8
    assert [bm.ref_count(i) for i in range(3)] == [2, 2, 1]
    child.append_token(77)
    assert bm.allocate(child, child.num_uncomputed)  # tokens 8, 9 and 77
    assert child.block_table == [0, 1, 3]
    bm.free(parent)
    bm.free(child)
    assert bm.num_used_blocks == 0


def test_no_prefix_caching_means_no_hits_and_no_registration():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    computed(bm, [1, 2, 3, 4, 5])
    assert bm.cached_block_ids() == set()
    assert bm.find_cached_prefix(seq([1, 2, 3, 4, 5])) == []


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0, block_size=4)
