"""One completion's token stream and its bookkeeping: what is computed, what is cached, where
its KV lives. Plain Python (no torch), shared by the block manager, the scheduler and the engine.

A request with n completions owns n sequences. The first one (index 0) prefills the prompt; the
others wait as `pending_forks` of it and are forked off when the prompt's last token is computed,
each sampling its own first token from the same logits (see `Scheduler.update` and
`BlockManager.fork`).
"""

from __future__ import annotations

import itertools
from enum import Enum

from chatforge.engine.outputs import FinishReason, TokenLogprob
from chatforge.engine.sampling_params import SamplingParams

_seq_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = "waiting"  # in the waiting queue: new, or preempted and to be recomputed
    RUNNING = "running"  # holds blocks and is scheduled every step
    FORK_PENDING = "fork_pending"  # a completion of n > 1 waiting for its parent's prompt
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, index: int = 0):
        self.seq_id = next(_seq_ids)  # unique in the process; keys per-sequence state elsewhere
        self.request_id = request_id
        self.index = index  # which of the request's n completions
        self.params = params
        self.token_ids: list[int] = list(prompt_ids)  # prompt, then generated tokens
        self.num_prompt_tokens = len(prompt_ids)
        # Tokens whose K/V are in the cache. The scheduler's whole job is to bring this up to
        # len(token_ids); there is no separate prefill or decode phase.
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache at first admission
        self.block_table: list[int] = []  # block ids, in order; block i holds tokens [i*bs, (i+1)*bs)
        self.block_hashes: list[int] = []  # chained hash of each full block of token_ids, in order
        self.num_registered_blocks = 0  # leading blocks already offered to the prefix cache
        self.num_preemptions = 0
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.stop_token_id: int | None = None
        self.pending_forks: list[Sequence] = []  # the request's other completions, until forked
        # With params.prompt_logprobs: prompt tokens 1, 2, ... scored so far (prompt_logprobs.py),
        # handed out once, with the request's first output.
        self.prompt_logprobs: list[TokenLogprob] = []
        self.prompt_logprobs_sent = False
        # The live grammar state (engine/grammar.py). Each completion starts its own from the
        # request's compiled grammar: a fork begins at the prompt, as its parent did.
        self.matcher = params.grammar.matcher() if params.grammar is not None else None

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id}#{self.index}, tokens={len(self.token_ids)}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table}, {self.status.value})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def finish(self, reason: FinishReason, stop_token_id: int | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.stop_token_id = stop_token_id

    def fork(self, index: int) -> Sequence:
        """A sibling with the same prompt and no generated token, to be forked off this one."""
        return Sequence(self.request_id, self.token_ids[: self.num_prompt_tokens], self.params, index)

    def attach_forks(self) -> list[Sequence]:
        """Set a new request up: its other n - 1 completions become this (first) sequence's
        pending forks, waiting (FORK_PENDING) until its prompt's last token is computed."""
        forks = [self.fork(i) for i in range(1, self.params.n)]
        for fork in forks:
            fork.status = SequenceStatus.FORK_PENDING
        self.pending_forks = list(forks)
        return forks
