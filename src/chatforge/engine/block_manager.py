"""The KV pool's bookkeeping: fixed-size blocks, reference counts, a free list and a
hash-chained prefix cache. Plain Python; the tensors themselves belong to the model runner.

A block is either referenced (ref > 0, owned by one or more sequences) or free. Free blocks
sit in one ordered list, taken from the front:
- blocks that hold nothing reusable go to the front, so they are used first;
- blocks registered in the prefix cache go to the back, in least-recently-freed order, and keep
  their contents until taken: taking one evicts it from the cache. A prefix hit on a free cached
  block takes it out of the free list again.
A sequence is freed last block first, so the deepest blocks of a prefix are evicted before its
root, which more prompts share.

Block i of a sequence is identified by hash((hash of block i-1, its block_size token ids)), so
one hash names the whole prefix up to the end of that block.
"""

from __future__ import annotations

from collections import OrderedDict

from chatforge.engine.sequence import Sequence

_NO_PARENT = 0  # the "previous hash" of a sequence's first block


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._hashes: list[int | None] = [None] * num_blocks  # set while the block is in the cache
        self._tokens: list[tuple[int, ...] | None] = [None] * num_blocks  # guards against collisions
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    # -- reading ---------------------------------------------------------------------------

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def free_block_ids(self) -> list[int]:
        """The free list in the order blocks will be taken (front first)."""
        return list(self._free)

    def cached_block_ids(self) -> set[int]:
        return set(self._cached.values())

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ------------------------------------------------------------------------

    def _hash_full_blocks(self, seq: Sequence) -> None:
        bs = self.block_size
        hashes = seq.block_hashes
        for i in range(len(hashes), len(seq.token_ids) // bs):
            parent = hashes[-1] if hashes else _NO_PARENT
            hashes.append(hash((parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))))

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest cached prefix of `seq`, taking no reference.

        At least the last token is left out, because the step that computes it must produce the
        logits to sample from.
        """
        if not self.enable_prefix_caching:
            return []
        self._hash_full_blocks(seq)
        bs = self.block_size
        hits: list[int] = []
        for i in range((len(seq.token_ids) - 1) // bs):
            block_id = self._cached.get(seq.block_hashes[i])
            # NOTE: the token check rules out a collision on this block; a collision earlier in
            # the chain is as unlikely as a 64-bit hash collision and is not guarded against.
            if block_id is None or self._tokens[block_id] != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break
            hits.append(block_id)
        return hits

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Offer the sequence's full, computed blocks to the prefix cache (after a model step)."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_registered_blocks:
            return
        self._hash_full_blocks(seq)
        bs = self.block_size
        for i in range(seq.num_registered_blocks, num_full):
            block_id, h = seq.block_table[i], seq.block_hashes[i]
            # A block already cached under another id holds the same K/V: keep the first one.
            if self._hashes[block_id] is None and h not in self._cached:
                self._cached[h] = block_id
                self._hashes[block_id] = h
                self._tokens[block_id] = tuple(seq.token_ids[i * bs : (i + 1) * bs])
        seq.num_registered_blocks = num_full

    # -- allocation --------------------------------------------------------------------------

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None) -> bool:
        """Grow the block table so that `num_new_tokens` more tokens fit; all or nothing.

        `cached_blocks` (from `find_cached_prefix`, only for a sequence with no blocks yet) are
        shared by reference and count as computed tokens. Returns False, changing nothing, when
        the free list is too short.
        """
        cached_blocks = cached_blocks or []
        if cached_blocks and seq.block_table:
            raise ValueError("cached blocks can only start an empty block table")
        num_cached_tokens = len(cached_blocks) * self.block_size
        total = seq.num_computed_tokens + num_cached_tokens + num_new_tokens
        num_fresh = self.blocks_needed(total) - len(seq.block_table) - len(cached_blocks)
        num_revived = sum(1 for b in cached_blocks if self._ref_counts[b] == 0)
        if num_fresh + num_revived > len(self._free):
            return False
        for block_id in cached_blocks:
            if self._ref_counts[block_id] == 0:
                del self._free[block_id]
            self._ref_counts[block_id] += 1
        seq.block_table.extend(cached_blocks)
        for _ in range(max(num_fresh, 0)):
            seq.block_table.append(self._take_free_block())
        if cached_blocks:  # already in the cache: nothing to register for them
            seq.num_computed_tokens = num_cached_tokens
            seq.num_registered_blocks = len(cached_blocks)
        return True

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        h = self._hashes[block_id]
        if h is not None:  # evict it from the prefix cache
            del self._cached[h]
            self._hashes[block_id] = None
            self._tokens[block_id] = None
        self._ref_counts[block_id] = 1
        return block_id

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Share the parent's full prompt blocks with a new sibling.

        The partly filled last block is not shared (the two would write different tokens into
        it): the child recomputes those few tokens into a block of its own.
        """
        num_shared = parent.num_prompt_tokens // self.block_size
        child.block_table = parent.block_table[:num_shared]
        for block_id in child.block_table:
            self._ref_counts[block_id] += 1
        child.block_hashes = parent.block_hashes[:num_shared]
        child.num_registered_blocks = min(parent.num_registered_blocks, num_shared)
        child.num_computed_tokens = num_shared * self.block_size

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self._ref_counts[block_id] -= 1
            if self._ref_counts[block_id] == 0:
                self._free[block_id] = None
                if self._hashes[block_id] is None:
                    self._free.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.num_registered_blocks = 0
        seq.num_computed_tokens = 0
