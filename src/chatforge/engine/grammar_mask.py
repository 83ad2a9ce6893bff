"""Grammar masks in the sampler: fill one bitmask row per constrained row, add it to the logits.

Only rows whose sequence carries a matcher (engine/grammar.py) pay anything; the other rows'
logits are not touched, so they stay bit-identical and batch-invariant.

The bitmask (int32 [R, ceil(V / 32)], bit j of word w = token 32w + j) becomes an additive mask
through a 256 x 8 lookup table: each byte of the bitmask picks a row of eight values, 0.0 for an
allowed token and -inf for a forbidden one. `x + 0.0 == x` and `x + -inf == -inf`, so the add is
exact, needs no compiler, and is row-wise. (Measured on this CPU: 1.5 ms for 32 rows of a
49 152-token vocabulary; a boolean `masked_fill_` costs 4-6x that, and llguidance's own torch
helper compiles with torch.compile on first use, ~17 s inside the engine thread: never used.)
Where chatforge's CPU kernels are loaded (the native backend), one C loop does the same in place
without the float mask: a word whose 32 tokens are all allowed costs one compare (32 rows of the
bundled model's vocabulary, benchmarks/constrained.py: 3.0 ms -> 0.8 ms per step).

Greedy rows are masked only where needed. Every step the sampler does after the mask is
elementwise and keeps -inf (bans, penalties), so a greedy row's masked logits are its unmasked
ones with the forbidden tokens at -inf; their argmax is the unmasked argmax whenever the grammar
allows that token (the first maximum overall is then the first allowed one). So the sampler takes
each greedy constrained row's argmax unmasked, asks the matcher whether it allows it, and only
for the rows it refuses fills a mask and takes the argmax again (`GrammarMasks.redo_refused`):
the same tokens, bit for bit, as masking every row first. Filling a mask is llguidance's dear
part (~0.15 ms a row of the bundled vocabulary, fresh for every state); the model's own argmax
is allowed most of the time (benchmarks/constrained.py's decode filled masks for 6.4% of its
rows), and the check costs a few microseconds. Sampled rows are masked before they draw, as the
order says.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from chatforge.engine.grammar import GrammarMatcher, MaskFiller
from chatforge.engine.sequence import Sequence
from chatforge.models import native


def _lookup_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[256, 8]: entry [b, i] is 0.0 when bit i of byte b is set, else -inf.

    NOTE: viewing an int32 word as four bytes puts its low byte first on little-endian hosts
    (x86-64, ARM64), which is what makes byte k of word w hold tokens 32w + 8k .. 32w + 8k + 7."""
    bits = (torch.arange(256)[:, None] >> torch.arange(8)[None, :]) & 1
    table = torch.zeros(256, 8, dtype=dtype)
    table[bits == 0] = float("-inf")
    return table.to(device)


@dataclass
class StepMasks:
    """The masks of one step: logits rows `rows` take the additive mask of `bitmask`'s rows."""

    rows: torch.Tensor  # [R] long, rows of the sampler's logits
    bitmask: torch.Tensor  # [R, W] int32, on the logits' device
    table: torch.Tensor  # [256, 8] of the logits' dtype
    infinite_bias: bool  # a constrained row has an infinite logit_bias (inf + -inf is NaN)
    kernels: ctypes.CDLL | None = None  # chatforge's CPU kernels, when loaded

    def apply(self, logits: torch.Tensor) -> None:
        """In place on logits [N, V]: forbidden tokens of the constrained rows become -inf."""
        num_rows, vocab = len(self.rows), logits.shape[1]
        if self.kernels is not None and logits.device.type == "cpu" and logits.dtype == torch.float32 \
                and logits.stride(1) == 1:
            self.kernels.cf_apply_token_bitmask(logits.data_ptr(), logits.stride(0), self.rows.data_ptr(), num_rows,
                                                self.bitmask.data_ptr(), self.bitmask.shape[1], vocab)
            return
        additive = F.embedding(self.bitmask.view(torch.uint8).long(), self.table).view(num_rows, -1)[:, :vocab]
        if not self.infinite_bias:
            logits.index_add_(0, self.rows, additive)  # NOTE: ~2x faster than logits[rows] += on CPU
            return
        masked = logits[self.rows] + additive
        logits[self.rows] = masked.masked_fill_(masked.isnan(), float("-inf"))  # the grammar wins over a bias


class GrammarMasks:
    """The sampler's mask maker: a reused bitmask buffer and the lookup table."""

    def __init__(self, vocab_size: int, device: torch.device, kernels: ctypes.CDLL | None | str = "if-loaded"):
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        if kernels == "if-loaded":  # never builds them: the native backend has, or torch does the work
            kernels = native.loaded() if self.device.type == "cpu" else None
        self.kernels = kernels
        self._words = (vocab_size + 31) // 32
        self._buffer = np.zeros((0, self._words), dtype=np.int32)
        self._table = _lookup_table(torch.float32, self.device)

    def fill(self, seqs: list[Sequence], rows: list[int] | None = None, at: list[int] | None = None) -> StepMasks | None:
        """Masks for `rows` of `seqs` (default: every row whose sequence carries a matcher), to
        apply to the logits rows `at` (default: the same rows); None when there is none."""
        if rows is None:
            rows = constrained_rows(seqs)
        if not rows:
            return None
        if len(self._buffer) < len(rows):
            self._buffer = np.zeros((max(len(rows), 2 * len(self._buffer)), self._words), dtype=np.int32)
        bitmask = self._buffer[: len(rows)]  # C-contiguous: whole rows of the buffer
        groups: dict[int, tuple[MaskFiller, list[tuple[GrammarMatcher, int]]]] = {}
        for k, i in enumerate(rows):
            matcher = seqs[i].matcher
            groups.setdefault(id(matcher.mask_filler), (matcher.mask_filler, []))[1].append((matcher, k))
        for filler, items in groups.values():
            filler.fill(items, bitmask)
        infinite_bias = any(math.isinf(v) for i in rows for v in seqs[i].params.logit_bias.values())
        return StepMasks(
            torch.tensor(rows if at is None else at, dtype=torch.long, device=self.device),
            torch.from_numpy(bitmask).to(self.device),
            self._table,
            infinite_bias,
            self.kernels,
        )

    def redo_refused(
        self, processed: torch.Tensor, seqs: list[Sequence], rows: list[int], token_ids: list[int]
    ) -> dict[int, int]:
        """For greedy constrained `rows` whose unmasked argmax `token_ids[i]` the grammar refuses:
        the argmax of the masked row, {row: token}. `processed` [N, V]: the rows' logits after
        steps 2-4 without any mask (left untouched)."""
        refused = [i for i in rows if not seqs[i].matcher.allows(token_ids[i])]
        if not refused:
            return {}
        again = processed[torch.tensor(refused, device=processed.device)]  # a copy, rows 0..k-1
        self.fill(seqs, refused, at=list(range(len(refused)))).apply(again)
        return dict(zip(refused, again.argmax(dim=-1).tolist()))


def constrained_rows(seqs: list[Sequence]) -> list[int]:
    return [i for i, s in enumerate(seqs) if s.matcher is not None]
