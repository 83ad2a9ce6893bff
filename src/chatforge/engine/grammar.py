"""Constrained decoding as the engine sees it: a sequence may carry a live grammar matcher.

The engine knows no grammar library. A request's `SamplingParams.grammar` is a compiled,
immutable `Grammar` (built and validated by the service before admission; the llguidance one is
`text/structured.py`). Each of the request's sequences starts its own `GrammarMatcher` from it,
and the engine asks that matcher four things only:

- before sampling, its allowed tokens, written as one bitmask row (`engine/grammar_mask.py`
  applies the rows in the sampler, DESIGN §3 step 2, after `logit_bias`);
- for a greedy row, whether its mask would allow one token: the row's argmax without the mask.
  When it does, that token is the masked argmax too, and the row's mask is never computed (a
  mask costs ~0.15 ms of a 49k vocabulary, the answer a few microseconds; grammar_mask.py);
- after sampling, to take the sampled token (`accept_token` below, from `Scheduler.update`);
- whether the grammar has finished: then the sequence ends at once with `stop`, whatever
  `ignore_eos` and `min_tokens` say, so no text can follow a complete answer.

A token the matcher refuses (only possible when every token was masked out, or the grammar ran
out of its per-step budget) ends the sequence with `GRAMMAR_ERROR` and the matcher's message;
never an engine error. Plain Python: the scheduler imports this module, so no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Protocol

from chatforge.engine.outputs import FinishReason

if TYPE_CHECKING:
    import numpy as np

    from chatforge.engine.sequence import Sequence


class MaskFiller(Protocol):
    """Fills the bitmask rows of many matchers at once (one filler per grammar library and
    model, so a step makes one call per filler, e.g. llguidance's parallel executor)."""

    def fill(self, items: Seq[tuple[GrammarMatcher, int]], bitmask: np.ndarray) -> None:
        """For each (matcher, k): write the matcher's allowed tokens into row k of `bitmask`,
        int32 [R, ceil(V / 32)], bit j of word w set = token 32 * w + j allowed."""
        ...


class GrammarMatcher(Protocol):
    """One sequence's position in its grammar. Owned by that sequence only."""

    mask_filler: MaskFiller

    def allows(self, token_id: int) -> bool:
        """True only when the mask allows token_id here (without advancing). It may answer False
        for a token the mask allows (where it cannot tell cheaply): the caller then fills the mask."""
        ...

    def accept(self, token_id: int) -> bool:
        """Advance by the sampled token; False when the grammar cannot take it (then error() says why)."""
        ...

    def is_finished(self) -> bool:
        """The grammar is complete and allows nothing more (or it took an end-of-sequence token)."""
        ...

    def error(self) -> str:
        """Why the matcher failed; empty while it has not."""
        ...


class Grammar(Protocol):
    """A compiled constraint, immutable and shared by the n sequences of one request."""

    vocab_size: int  # the width of the masks it writes: must be the model's vocabulary

    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the start of the grammar."""
        ...


def accept_token(seq: Sequence, token_id: int, stop_token_ids: frozenset[int]) -> bool:
    """Feed the sampled token to seq's matcher; end seq when the grammar is done or failed.

    Returns whether seq ended here. A grammar that ends on an end-of-sequence or stop id
    (it allows those only where the output is complete) ends with that id as `stop_token_id`,
    which is not part of the text, exactly as an unconstrained EOS."""
    matcher = seq.matcher
    if not matcher.accept(token_id):
        seq.finish(FinishReason.GRAMMAR_ERROR)
    elif matcher.is_finished():
        is_stop_id = token_id in stop_token_ids or token_id in seq.params.stop_token_ids
        seq.finish(FinishReason.STOP, stop_token_id=token_id if is_stop_id else None)
    return seq.is_finished


def grammar_error(seq: Sequence) -> str | None:
    """The matcher's message for a sequence that ended with GRAMMAR_ERROR, else None."""
    if seq.finish_reason is not FinishReason.GRAMMAR_ERROR or seq.matcher is None:
        return None
    return seq.matcher.error() or "the grammar refused the sampled token"
