"""What the scheduler hands the model runner each step: the contract between them.

There is no prefill or decode phase. Each sequence has tokens computed (K/V in the cache) and
tokens it holds; a step computes a slice of the difference for some sequences. A new prompt is
one long slice (or several, when chunked), a decoding sequence a slice of one token, and a
recomputed (preempted) sequence a slice covering prompt and generated tokens alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatforge.engine.sequence import Sequence


@dataclass
class ScheduledBatch:
    # The rows of this step: running sequences oldest first, then the newly admitted ones.
    seqs: list[Sequence] = field(default_factory=list)
    # Row i computes tokens [seqs[i].num_computed_tokens, + num_new_tokens[i]) of seqs[i];
    # num_computed_tokens is only advanced after the step, by `Scheduler.update`.
    num_new_tokens: list[int] = field(default_factory=list)
    # Rows whose slice reaches the end of their tokens: only their last position goes through
    # the lm_head, in this order (a chunk in the middle of a prompt samples nothing).
    sample_indices: list[int] = field(default_factory=list)
    # Who draws a token this step, in the sampler's row order: each sampling row's sequence,
    # followed by its pending forks (the other completions of an n > 1 request) when the row
    # finishes that request's prompt.
    sample_seqs: list[Sequence] = field(default_factory=list)
    # For each of sample_seqs, the logits row it samples from (an index into sample_indices).
    # Forks repeat their parent's row.
    logits_rows: list[int] = field(default_factory=list)
    # Sequences sent back to the waiting queue this step; their K/V is dropped and recomputed.
    preempted: list[Sequence] = field(default_factory=list)
    # Sequences that finished (or were aborted) since the last step: the runner forgets their
    # per-sequence state (sampling generators, token histories) before running this one.
    finished_seq_ids: list[int] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def has_forks(self) -> bool:
        return len(self.sample_seqs) != len(self.sample_indices)
