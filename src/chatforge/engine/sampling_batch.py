"""A batch's SamplingParams turned into per-row tensors, built once per step for the sampler.

Each group of tensors is None when no row needs it, so the sampler skips that stage outright;
the token-history (row, token) pairs are only gathered for rows that use a penalty, from each
sequence's persistent token tensor (engine/token_history.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chatforge.engine.sequence import Sequence
from chatforge.engine.token_history import TokenHistory


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _float(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


@dataclass
class FilterParams:
    """Step 6 parameters of the non-greedy rows, in their order; None = every row at its default."""

    temperature: torch.Tensor | None = None  # [S] float
    top_k: torch.Tensor | None = None  # [S] long, clamped to the vocabulary
    top_k_active: torch.Tensor | None = None  # [S] bool
    top_p: torch.Tensor | None = None  # [S] float, 1 - top_p (see sampling_ops.top_p)
    top_p_active: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    min_p_active: torch.Tensor | None = None
    typical_p: torch.Tensor | None = None
    typical_p_active: torch.Tensor | None = None

    @classmethod
    def build(cls, seqs: list[Sequence], vocab_size: int, device: torch.device) -> FilterParams:
        ps = [s.params for s in seqs]
        f = cls()
        if any(p.temperature != 1.0 for p in ps):
            f.temperature = _float([p.temperature for p in ps], device)
        if any(p.top_k > 0 for p in ps):
            f.top_k = _long([min(p.top_k, vocab_size) or vocab_size for p in ps], device)
            f.top_k_active = torch.tensor([p.top_k > 0 for p in ps], device=device)
        if any(p.top_p < 1.0 for p in ps):
            f.top_p = _float([1.0 - p.top_p for p in ps], device)  # float64 subtraction, then cast
            f.top_p_active = torch.tensor([p.top_p < 1.0 for p in ps], device=device)
        if any(p.min_p > 0.0 for p in ps):
            f.min_p = _float([p.min_p for p in ps], device)
            f.min_p_active = torch.tensor([p.min_p > 0.0 for p in ps], device=device)
        if any(p.typical_p < 1.0 for p in ps):
            f.typical_p = _float([p.typical_p for p in ps], device)
            f.typical_p_active = torch.tensor([p.typical_p < 1.0 for p in ps], device=device)
        return f


@dataclass
class SamplingBatch:
    sampled_rows: torch.Tensor | None  # [S] rows with temperature > 0
    filters: FilterParams | None  # for sampled_rows
    logprob_rows: torch.Tensor | None  # rows that asked for logprobs
    # Step 2: (row, token) pairs; a bias entry per logit_bias item, a ban per stop id.
    bias_rows: torch.Tensor | None = None
    bias_cols: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    ban_rows: torch.Tensor | None = None
    ban_cols: torch.Tensor | None = None
    # Step 3: [N] penalties, and (row, token) pairs over prompt + generated tokens.
    repetition_penalty: torch.Tensor | None = None
    seen_rows: torch.Tensor | None = None
    seen_cols: torch.Tensor | None = None
    # Step 4: [N] penalties, and (row, token) pairs over generated tokens (repeats counted).
    frequency_penalty: torch.Tensor | None = None
    presence_penalty: torch.Tensor | None = None
    generated_rows: torch.Tensor | None = None
    generated_cols: torch.Tensor | None = None

    @property
    def needs_processing(self) -> bool:
        return any(
            t is not None for t in (self.bias_rows, self.ban_rows, self.repetition_penalty, self.frequency_penalty)
        )

    @classmethod
    def build(
        cls, seqs: list[Sequence], vocab_size: int, stop_token_ids: frozenset[int], device: torch.device,
        history: TokenHistory | None = None,
    ) -> SamplingBatch:
        ps = [s.params for s in seqs]
        sampled = [i for i, p in enumerate(ps) if p.temperature > 0]
        logprob_rows = [i for i, p in enumerate(ps) if p.logprobs]
        b = cls(
            sampled_rows=_long(sampled, device) if sampled else None,
            filters=FilterParams.build([seqs[i] for i in sampled], vocab_size, device) if sampled else None,
            logprob_rows=_long(logprob_rows, device) if logprob_rows else None,
        )
        b._add_bias_and_bans(seqs, stop_token_ids, device)
        b._add_penalties(seqs, device, history or TokenHistory(device))
        return b

    def _add_bias_and_bans(self, seqs: list[Sequence], stop_token_ids: frozenset[int], device: torch.device) -> None:
        rows, cols, values, ban_rows, ban_cols = [], [], [], [], []
        for i, s in enumerate(seqs):
            p = s.params
            if p.logit_bias:
                rows.extend([i] * len(p.logit_bias))
                cols.extend(p.logit_bias.keys())
                values.extend(p.logit_bias.values())
            if s.num_generated < p.min_tokens:
                stops = set(p.stop_token_ids) if p.ignore_eos else set(p.stop_token_ids) | stop_token_ids
                ban_rows.extend([i] * len(stops))
                ban_cols.extend(sorted(stops))
        if rows:
            self.bias_rows, self.bias_cols, self.bias_values = _long(rows, device), _long(cols, device), _float(values, device)
        if ban_rows:
            self.ban_rows, self.ban_cols = _long(ban_rows, device), _long(ban_cols, device)

    def _add_penalties(self, seqs: list[Sequence], device: torch.device, history: TokenHistory) -> None:
        ps = [s.params for s in seqs]
        repeated = [i for i, p in enumerate(ps) if p.repetition_penalty != 1.0]
        if repeated:
            self.repetition_penalty = _float([p.repetition_penalty for p in ps], device)
            self.seen_rows, self.seen_cols = history.pairs(seqs, repeated, generated_only=False)
        counted = [i for i, p in enumerate(ps) if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0]
        if counted:
            self.frequency_penalty = _float([p.frequency_penalty for p in ps], device)
            self.presence_penalty = _float([p.presence_penalty for p in ps], device)
            self.generated_rows, self.generated_cols = history.pairs(seqs, counted, generated_only=True)
