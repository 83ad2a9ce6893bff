"""Runs one scheduled batch through the model backend over the paged KV cache, then the sampler.

The runner holds the KV cache the backend allocated (models/step.py). Each step it flattens the
batch into one token row per new token (a `StepInputs`: ids, lengths, block tables, the rows
that sample), the backend runs the forward pass for every sequence together and returns logits
for the sampling rows only (each sequence's last new token), and the sampler draws.

Batch invariance is the backend's to give: the native one computes every row the same way
whatever the batch (models/native/model.h), so greedy and seeded outputs do not depend on what
else runs; the torch backend (the exact mode) does not promise it.
"""

from __future__ import annotations

import torch

from chatforge.engine import prompt_logprobs
from chatforge.engine.batch import ScheduledBatch
from chatforge.engine.sampler import Sampler, SamplerOutput
from chatforge.models.step import ModelBackend, StepInputs


class ModelRunner:
    def __init__(self, backend: ModelBackend, num_blocks: int, block_size: int, sampler: Sampler):
        self.backend = backend
        self.sampler = sampler
        self.kv_cache = backend.allocate_kv_cache(num_blocks, block_size)

    def release(self, seq_ids: list[int]) -> None:
        """Forget finished sequences' per-sequence state."""
        for seq_id in seq_ids:
            self.sampler.release(seq_id)

    def execute(self, batch: ScheduledBatch) -> SamplerOutput:
        """One forward pass over the batch, then one token for each of batch.sample_seqs."""
        self.release(batch.finished_seq_ids)
        logits = self.backend.execute(step_inputs(batch), self.kv_cache)  # float32 [S, V]
        scores = prompt_logprobs.score_prompts(self.backend.step_logits, batch) if prompt_logprobs.wanted(batch) else []
        if not batch.sample_indices:
            return SamplerOutput([], [], scores)
        if batch.has_forks:
            logits = logits[torch.tensor(batch.logits_rows, device=logits.device)]
        sampled = self.sampler(logits, batch.sample_seqs)
        sampled.prompt_scores = scores
        return sampled


def step_inputs(batch: ScheduledBatch) -> StepInputs:
    seqs, query_lens = batch.seqs, batch.num_new_tokens
    context_lens = [s.num_computed_tokens + n for s, n in zip(seqs, query_lens)]
    if len(query_lens) == batch.num_batched_tokens:  # one new token each (decoding)
        ids = [s.token_ids[s.num_computed_tokens] for s in seqs]
        ends = range(len(seqs))
    else:
        ids = [t for s, n, c in zip(seqs, query_lens, context_lens) for t in s.token_ids[c - n : c]]
        ends, total = [], 0
        for n in query_lens:
            total += n
            ends.append(total - 1)
    return StepInputs(
        token_ids=ids,
        query_lens=list(query_lens),
        context_lens=context_lens,
        block_tables=[s.block_table for s in seqs],
        sample_rows=[ends[i] for i in batch.sample_indices],
    )
