"""Prompt logprobs: how likely the model found each prompt token, given the ones before it
(`SamplingParams.prompt_logprobs`; the completions route's `echo` with `logprobs`, which is how
evaluation harnesses score a continuation).

The forward pass already computes a hidden state for every new token of a step; the lm_head
normally sees only the rows that sample. For a sequence that asked, this module has the backend
send the rows of its prompt slice through the lm_head too, after the step
(`ModelBackend.step_logits`): the row at position p scores prompt token p + 1. Such a sequence never takes prompt blocks from the prefix
cache (scheduler.py): every prompt position must be computed to be scored. A position scored
once is not scored again when a preempted sequence is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from chatforge.engine.batch import ScheduledBatch
from chatforge.engine.outputs import TokenLogprob
from chatforge.engine.sequence import Sequence

_ROWS_PER_CHUNK = 128  # lm_head rows at once: 128 x a 50k vocabulary of float32 is 25 MB


@dataclass
class PromptScores:
    """Scores of prompt tokens first + 1 .. first + len(logprobs) of `seq`, from one step."""

    seq: Sequence
    first: int  # the position of the first scored row
    logprobs: list[TokenLogprob]


def wanted(batch: ScheduledBatch) -> bool:
    return any(s.params.prompt_logprobs is not None for s in batch.seqs)


@torch.inference_mode()
def score_prompts(logits_of: Callable[[list[int]], torch.Tensor], batch: ScheduledBatch) -> list[PromptScores]:
    """logits_of(rows): float32 logits [len(rows), V] of flat rows of the step just run (one row
    per new token, in batch order)."""
    out = []
    row = 0
    for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
        k = seq.params.prompt_logprobs
        start = seq.num_computed_tokens  # this step computes positions [start, start + num_new)
        if k is not None and seq.index == 0:  # forks share the first completion's prompt
            first = max(start, len(seq.prompt_logprobs))  # positions scored before are skipped
            end = min(start + num_new, seq.num_prompt_tokens - 1)  # the last prompt row samples, it scores nothing
            if first < end:
                rows = list(range(row + first - start, row + end - start))
                out.append(PromptScores(seq, first, _score(logits_of, rows, seq.token_ids[first + 1 : end + 1], k)))
        row += num_new
    return out


def _score(logits_of, rows: list[int], targets: list[int], k: int) -> list[TokenLogprob]:
    scores = []
    for i in range(0, len(targets), _ROWS_PER_CHUNK):
        logprobs = logits_of(rows[i : i + _ROWS_PER_CHUNK]).log_softmax(dim=-1)  # [m, V]
        chunk = torch.tensor(targets[i : i + _ROWS_PER_CHUNK], device=logprobs.device)
        chosen = logprobs.gather(1, chunk[:, None])[:, 0].tolist()
        top_ids: list[list[int]] = [[] for _ in chosen]
        top_values: list[list[float]] = [[] for _ in chosen]
        if k:
            top = logprobs.topk(k, dim=-1)  # best first
            top_ids, top_values = top.indices.tolist(), top.values.tolist()
        scores.extend(
            TokenLogprob(t, lp, list(zip(ids, values)))
            for t, lp, ids, values in zip(chunk.tolist(), chosen, top_ids, top_values)
        )
    return scores


def record(scores: list[PromptScores]) -> None:
    """Book a step's scores on their sequences (after the step succeeded)."""
    for s in scores:
        if s.first == len(s.seq.prompt_logprobs):
            s.seq.prompt_logprobs.extend(s.logprobs)
