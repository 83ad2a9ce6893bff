"""Each running sequence's token ids as a tensor the sampler can index, kept across steps.

The penalties (repetition over prompt + generated tokens, frequency / presence over generated
ones) need a sequence's whole history every step. Rebuilding (row, token) pairs from Python lists
costs O(context) Python work per penalised row and step; here each sequence's tensor grows by its
new tokens only (amortised doubling), and a step's pairs are a `torch.cat` of views.
"""

from __future__ import annotations

import torch

from chatforge.engine.sequence import Sequence


class TokenHistory:
    def __init__(self, device: torch.device):
        self.device = device
        self._tokens: dict[int, tuple[torch.Tensor, int]] = {}  # seq_id -> (buffer, tokens in it)

    def tokens(self, seq: Sequence) -> torch.Tensor:
        """[len(seq.token_ids)] long: the sequence's prompt and generated tokens (a view)."""
        buffer, known = self._tokens.get(seq.seq_id, (None, 0))
        total = len(seq.token_ids)
        if buffer is None or total > buffer.numel():
            grown = torch.empty(max(64, 2 * total), dtype=torch.long, device=self.device)
            if known:
                grown[:known] = buffer[:known]
            buffer = grown
        if known < total:
            buffer[known:total] = torch.tensor(seq.token_ids[known:total], dtype=torch.long, device=self.device)
        self._tokens[seq.seq_id] = (buffer, total)
        return buffer[:total]

    def pairs(self, seqs: list[Sequence], rows: list[int], generated_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(row index, token id) of every token of seqs[i] for i in rows (only the generated ones
        with `generated_only`), repeats kept: two long tensors of the same length."""
        parts = [self.tokens(seqs[i])[seqs[i].num_prompt_tokens if generated_only else 0 :] for i in rows]
        lengths = torch.tensor([len(p) for p in parts], dtype=torch.long, device=self.device)
        row_ids = torch.repeat_interleave(torch.tensor(rows, dtype=torch.long, device=self.device), lengths)
        return row_ids, torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=self.device)

    def release(self, seq_id: int) -> None:
        self._tokens.pop(seq_id, None)
