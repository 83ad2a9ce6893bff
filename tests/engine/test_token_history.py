"""engine/token_history.py: the sampler's persistent token tensors give the (row, token) pairs a
rebuild from the sequences' lists would, across appends, growth and release."""

from __future__ import annotations

import torch

from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.sequence import Sequence
from chatforge.engine.token_history import TokenHistory


def expected(seqs, rows, generated_only):
    r, c = [], []
    for i in rows:
        ids = seqs[i].generated_ids if generated_only else seqs[i].token_ids
        r += [i] * len(ids)
        c += ids
    return r, c


def test_pairs_follow_the_sequences_as_they_grow():
    history = TokenHistory(torch.device("cpu"))
    seqs = [Sequence(str(i), list(range(10 * i + 1, 10 * i + 4 + i)), SamplingParams()) for i in range(3)]
    for step in range(150):  # past the first buffer of 64, and its doubling
        for s in seqs:
            s.append_token(step % 7 + s.seq_id)
        for rows in ([0, 2], [1], [0, 1, 2]):
            for generated_only in (False, True):
                got = history.pairs(seqs, rows, generated_only)
                assert (got[0].tolist(), got[1].tolist()) == expected(seqs, rows, generated_only)
    history.release(seqs[0].seq_id)
    assert history.pairs(seqs, [0], False)[1].tolist() == seqs[0].token_ids  # rebuilt from scratch
    assert [t.numel() for t in history.pairs(seqs, [], True)] == [0, 0]
