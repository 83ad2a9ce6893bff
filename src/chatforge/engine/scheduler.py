"""Continuous batching over the paged KV pool. Plain Python (no torch).

Each step, every running sequence gets its next slice (one token when decoding, a chunk when a
prompt is being prefilled), oldest first, under a budget of `max_num_batched_tokens`; then,
if nothing had to be preempted, waiting sequences are admitted in arrival order while the
budget, `max_num_seqs` and the free blocks allow. When a running sequence needs a block and
none is free, the newest running sequence is preempted: its blocks are freed and it goes back
to the front of the waiting queue, to be recomputed later (its computed blocks usually stay in
the prefix cache, so recomputing is often cheap).
"""

from __future__ import annotations

from collections import deque

from chatforge.engine.batch import ScheduledBatch
from chatforge.engine.block_manager import BlockManager
from chatforge.engine.errors import EngineOverloadedError
from chatforge.engine.grammar import accept_token
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_waiting: int,
        max_model_len: int,
        stop_token_ids: frozenset[int],
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_waiting = max_waiting
        self.max_model_len = max_model_len
        self.stop_token_ids = stop_token_ids  # EOS and end-of-turn ids of the model
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the last one is preempted first
        self.num_preemptions = 0
        self.num_prefix_cache_hit_tokens = 0  # tokens served from the prefix cache, over all admissions
        self.num_prefix_cache_queried_tokens = 0  # tokens looked up, over all admissions

    @property
    def num_running_seqs(self) -> int:
        return len(self.running)

    @property
    def num_waiting_seqs(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if len(self.waiting) >= self.max_waiting:
            raise EngineOverloadedError(f"the waiting queue is full ({self.max_waiting} requests)")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    # -- one step ----------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed, budget)
            if not self._make_room(seq, num_new, batch):
                break  # seq itself was the newest and got preempted
            self._schedule_row(batch, seq, num_new)
            budget -= num_new
            i += 1
        if not batch.preempted:
            budget = self._admit_waiting(batch, budget)
        return batch

    def _make_room(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> bool:
        """Allocate seq's slots, preempting the newest running sequences until they fit."""
        while not self.block_manager.allocate(seq, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> int:
        bm = self.block_manager
        num_seqs = sum(1 + len(s.pending_forks) for s in self.running)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            group = 1 + len(seq.pending_forks)
            if num_seqs + group > self.max_num_seqs:
                break
            # A prompt to score is computed whole: cached blocks would skip its positions.
            cached = bm.find_cached_prefix(seq) if seq.params.prompt_logprobs is None else []
            num_new = min(seq.num_tokens - len(cached) * bm.block_size, budget)
            if not bm.allocate(seq, num_new, cached):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num_seqs += group
            hit_tokens = len(cached) * bm.block_size
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = hit_tokens
            self.num_prefix_cache_hit_tokens += hit_tokens
            self.num_prefix_cache_queried_tokens += seq.num_tokens
            self._schedule_row(batch, seq, num_new)
            budget -= num_new
        return budget

    def _schedule_row(self, batch: ScheduledBatch, seq: Sequence, num_new: int) -> None:
        row = len(batch.seqs)
        batch.seqs.append(seq)
        batch.num_new_tokens.append(num_new)
        if seq.num_computed_tokens + num_new == seq.num_tokens:
            logits_row = len(batch.sample_indices)
            batch.sample_indices.append(row)
            for s in [seq, *seq.pending_forks]:
                batch.sample_seqs.append(s)
                batch.logits_rows.append(logits_row)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def update(self, batch: ScheduledBatch, sampled: list[int]) -> None:
        """Book a finished step: advance computed counts, append the tokens sampled for
        batch.sample_seqs (forking pending completions off their parent), finish and free what is done."""
        bm = self.block_manager
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
            bm.register_computed_blocks(seq)
        # Forks first, while every parent still holds its blocks (a parent may finish below).
        for seq, logits_row in zip(batch.sample_seqs, batch.logits_rows):
            if seq.status is SequenceStatus.FORK_PENDING:
                parent = batch.seqs[batch.sample_indices[logits_row]]
                parent.pending_forks = []
                bm.fork(parent, seq)
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
        any_finished = False
        for seq, token_id in zip(batch.sample_seqs, sampled):
            seq.append_token(token_id)
            if self._check_finished(seq, token_id):
                bm.free(seq)
                any_finished = True
        if any_finished:
            self.running = [s for s in self.running if not s.is_finished]

    def _check_finished(self, seq: Sequence, token_id: int) -> bool:
        params = seq.params
        if seq.matcher is not None and accept_token(seq, token_id, self.stop_token_ids):
            return True  # the grammar is complete, or it refused the token
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.stop_token_ids):
            seq.finish(FinishReason.STOP, stop_token_id=token_id)
        elif (params.max_tokens is not None and seq.num_generated >= params.max_tokens) or seq.num_tokens >= self.max_model_len:
            seq.finish(FinishReason.LENGTH)
        return seq.is_finished

    # -- ending requests early ---------------------------------------------------------------

    def finish_seqs(self, seqs: list[Sequence], reason: FinishReason) -> None:
        """End these sequences now (abort, stop string): drop them from the queues, free their blocks."""
        ending = {s.seq_id for s in seqs if not s.is_finished}
        if not ending:
            return
        for seq in seqs:
            if seq.is_finished:
                continue
            for fork in seq.pending_forks:
                fork.finish(reason)
            seq.pending_forks = []
            self.block_manager.free(seq)
            seq.finish(reason)
        self.running = [s for s in self.running if s.seq_id not in ending]
        if any(s.seq_id in ending for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if s.seq_id not in ending)
