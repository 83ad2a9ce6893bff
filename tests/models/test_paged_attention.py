"""Paged attention: index arithmetic on a hand-worked batch, and every way a batch can be cut
(chunked prefill, decode, mixed batches, shared prefix blocks) giving the logits of one plain
forward pass over each whole sequence."""

from __future__ import annotations

import random

import pytest
import torch

from chatforge.models.attention import AttentionMetadata
from chatforge.models.errors import AttentionMetadataError
from chatforge.models.loader import load_model
from chatforge.models.source import resolve_model

BLOCK = 4
NUM_BLOCKS = 40


def test_metadata_hand_worked_example():
    # seq 0: 5 positions, the last 2 new, blocks 7, 3, 9; seq 1: 3 positions, the last 1 new, blocks 4, 0.
    meta = AttentionMetadata.build([2, 1], [5, 3], [[7, 3, 9], [4, 0]], block_size=2)
    assert meta.positions.tolist() == [3, 4, 2]
    assert meta.slot_mapping.tolist() == [7, 18, 0]  # 3*2+1, 9*2+0, 0*2+0
    assert meta.key_index.tolist() == [[14, 15, 6, 7, 18], [8, 9, 0, 0, 0]]  # seq 1's pads repeat its last slot
    assert meta.query_index.tolist() == [[0, 1], [2, 2]]  # seq 1's pad repeats its only query
    assert meta.output_index.tolist() == [0, 1, 2]
    assert meta.last_token_index.tolist() == [1, 2]
    T, F = True, False
    assert meta.mask().tolist() == [
        [[[T, T, T, T, F], [T, T, T, T, T]]],
        [[[T, T, T, F, F], [T, T, T, F, F]]],
    ]
    assert meta.mask(2).tolist() == [
        [[[F, F, T, T, F], [F, F, F, T, T]]],
        [[[F, T, T, F, F], [F, T, T, F, F]]],
    ]
    assert meta.mask(2) is meta.mask(2)  # built once, shared by every layer
    additive = meta.mask(2, torch.float32)
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, meta.mask(2)) and torch.equal(additive == float("-inf"), ~meta.mask(2))


def test_metadata_without_cache():
    meta = AttentionMetadata.build([3, 1], [3, 1], None, block_size=16)
    assert meta.slot_mapping is None
    assert meta.positions.tolist() == [0, 1, 2, 0]
    assert meta.key_index.tolist() == [[0, 1, 2], [3, 3, 3]]


@pytest.mark.parametrize(
    "query_lens, context_lens, tables, match",
    [
        ([], [], [], "one query_len"),
        ([1, 2], [3], [[0]], "one query_len"),
        ([0], [3], [[0]], "1 <= query_len <= context_len"),
        ([4], [3], [[0]], "1 <= query_len <= context_len"),
        ([2], [5], None, "context_lens must equal query_lens"),
        ([1], [9], [[0, 1]], "2 blocks of 4 cannot hold 9"),
        ([1, 1], [2, 2], [[0]], "1 block tables for 2 sequences"),
    ],
)
def test_metadata_rejects_inconsistent_batches(query_lens, context_lens, tables, match):
    with pytest.raises(AttentionMetadataError, match=match):
        AttentionMetadata.build(query_lens, context_lens, tables, block_size=BLOCK)


@pytest.fixture(params=["llama_linear_untied", "mistral_sliding", "qwen2_mixed_window"])
def tiny(request, tiny_hf_folder):
    folder, _ = tiny_hf_folder(request.param)
    model, config = load_model(resolve_model(str(folder)))
    return model, config


class Paged:
    """Drives the model over a paged cache the way the engine's runner will: sequences own random,
    non-contiguous blocks; each step is a list of (sequence, first new position, end position)."""

    def __init__(self, model, sequences: dict[str, list[int]], seed: int = 0):
        self.model, self.sequences = model, sequences
        self.caches = model.allocate_kv_caches(NUM_BLOCKS, BLOCK)
        # NaN in every slot never written: reading one would poison the result.
        for k, v in self.caches:
            k.fill_(float("nan"))
            v.fill_(float("nan"))
        pool = list(range(NUM_BLOCKS))
        random.Random(seed).shuffle(pool)
        self.tables = {}
        for name, ids in sequences.items():
            n = -(-len(ids) // BLOCK)
            self.tables[name], pool = pool[:n], pool[n:]

    def step(self, work: list[tuple[str, int, int]]) -> dict[str, torch.Tensor]:
        meta = AttentionMetadata.build(
            [end - start for _, start, end in work],
            [end for _, _, end in work],
            [self.tables[name] for name, _, _ in work],
            BLOCK,
        )
        ids = torch.tensor([t for name, start, end in work for t in self.sequences[name][start:end]])
        with torch.inference_mode():
            logits = self.model.compute_logits(self.model(ids, meta.positions, meta, self.caches))
        return {name: rows for (name, _, _), rows in zip(work, logits.split(meta.query_lens))}


def reference(model, ids: list[int]) -> torch.Tensor:
    meta = AttentionMetadata.build([len(ids)], [len(ids)], None, BLOCK)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(ids), meta.positions, meta, None))


def sequences(vocab: int, lens: dict[str, int]) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(7)
    return {name: torch.randint(0, vocab, (n,), generator=g).tolist() for name, n in lens.items()}


def check(paged: Paged, work, refs) -> None:
    out = paged.step(work)
    for name, start, end in work:
        diff = (out[name] - refs[name][start:end]).abs().max().item()
        assert diff <= 1e-4, (name, start, end, diff)


def test_chunked_prefill_then_decode(tiny):
    model, config = tiny
    seqs = sequences(config.vocab_size, {"a": 26})
    refs = {"a": reference(model, seqs["a"])}
    paged = Paged(model, seqs)
    for start, end in [(0, 7), (7, 16), (16, 20)]:  # prefill in three chunks, crossing block edges
        check(paged, [("a", start, end)], refs)
    for pos in range(20, 26):  # decode, one token a step
        check(paged, [("a", pos, pos + 1)], refs)


def test_mixed_prefill_and_decode_in_one_batch(tiny):
    model, config = tiny
    seqs = sequences(config.vocab_size, {"a": 21, "b": 9, "c": 6})
    refs = {name: reference(model, ids) for name, ids in seqs.items()}
    paged = Paged(model, seqs, seed=3)
    check(paged, [("b", 0, 6), ("a", 0, 10), ("c", 0, 3)], refs)
    check(paged, [("a", 10, 17), ("b", 6, 7), ("c", 3, 4)], refs)  # second chunk beside two decodes
    check(paged, [("c", 4, 5), ("a", 17, 18), ("b", 7, 8)], refs)
    check(paged, [("a", 18, 21), ("b", 8, 9), ("c", 5, 6)], refs)


def test_decode_steps_of_several_sequences(tiny):
    """Decode-only steps (one token per sequence) over contexts of 1 to 30 positions: shorter and
    longer than the sliding windows, odd and even lengths, one and several blocks."""
    model, config = tiny
    seqs = sequences(config.vocab_size, {"a": 30, "b": 13, "c": 8, "d": 22})
    refs = {name: reference(model, ids) for name, ids in seqs.items()}
    paged = Paged(model, seqs, seed=11)
    check(paged, [("a", 0, 22), ("b", 0, 5)], refs)  # prefills
    check(paged, [("c", 0, 1)], refs)  # a decode step over a context of one position
    for step in range(7):
        check(paged, [("a", 22 + step, 23 + step), ("b", 5 + step, 6 + step), ("c", 1 + step, 2 + step)], refs)
    check(paged, [("d", 0, 21)], refs)
    check(paged, [("d", 21, 22), ("b", 12, 13), ("a", 29, 30)], refs)


def test_shared_prefix_blocks(tiny):
    """A second sequence with the same first 8 tokens reuses the first sequence's two full blocks
    (what the prefix cache does) and computes only its own tail: query_len < context_len at once."""
    model, config = tiny
    seqs = sequences(config.vocab_size, {"a": 13, "b": 11})
    seqs["b"][:8] = seqs["a"][:8]
    refs = {name: reference(model, ids) for name, ids in seqs.items()}
    paged = Paged(model, seqs, seed=5)
    paged.tables["b"][:2] = paged.tables["a"][:2]
    check(paged, [("a", 0, 13)], refs)
    check(paged, [("b", 8, 11)], refs)
    check(paged, [("a", 13 - 1, 13), ("b", 10, 11)], refs)  # rewriting a slot with the same K/V is harmless
