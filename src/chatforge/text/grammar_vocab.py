"""llguidance's copy of a model's vocabulary (`LLTokenizer`), built when the first constrained
request needs it rather than at load.

Why lazily: the copy costs time and memory in proportion to the vocabulary (for Gemma 3's
262,144 tokens 1-2 s and ~95 MiB), and many servers never see a constrained request. The first
one waits for the build, on whatever thread compiles it (the service compiles off the event
loop); requests that come meanwhile wait for the same build. A build that fails is remembered:
every constrained request then gets `GrammarVocabularyError` with the reason (the service's 503),
unconstrained requests are served as before.

The vocabulary llguidance sees is the model's own: each token's bytes from the tokenizer (the
bytes the detokenizer produces), its special tokens marked special (so a control token such as
`<|im_start|>` can never appear inside a JSON string), and the given end-of-turn ids as EOS.
Ids past the tokenizer's vocabulary (a model's padded embedding) are empty special tokens:
never allowed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import llguidance

from chatforge.heap import resident_bytes, return_free_heap
from chatforge.text.tokenizer import Tokenizer

log = logging.getLogger("chatforge.structured")


class GrammarVocabularyError(RuntimeError):
    """llguidance's copy of the vocabulary could not be built: no constraint can be enforced
    for this model. The message says why and is safe to show."""


class LazyGrammarVocabulary:
    """The `LLTokenizer` of one model, built on the first `get()` (thread-safe)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int]):
        self._args = (tokenizer, vocab_size, list(eos_token_ids))
        self._lock = threading.Lock()
        self._built: llguidance.LLTokenizer | None = None
        self._error: str | None = None

    @property
    def is_built(self) -> bool:
        return self._built is not None

    def get(self) -> llguidance.LLTokenizer:
        built = self._built
        if built is not None:
            return built
        with self._lock:
            if self._built is None and self._error is None:
                self._build()
            if self._error is not None:
                raise GrammarVocabularyError(self._error)
            return self._built

    def _build(self) -> None:
        t0, rss0 = time.perf_counter(), resident_bytes()
        try:
            self._built = build_ll_tokenizer(*self._args)
        except Exception as e:  # noqa: BLE001 - whatever llguidance raises, it is this model's failure
            self._error = f"constrained decoding is unavailable for this model: {type(e).__name__}: {e}"
            log.error("building the grammar engine's vocabulary failed: %s", e)
            return
        rss1 = resident_bytes()
        grown = "" if rss0 is None or rss1 is None else f", +{(rss1 - rss0) / 2**20:.0f} MiB resident"
        log.info("built the grammar engine's vocabulary (%d tokens) in %.2f s%s", self._args[1], time.perf_counter() - t0, grown)


def build_ll_tokenizer(tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> llguidance.LLTokenizer:
    """llguidance's tokenizer over exactly the model's vocabulary (see the module docstring)."""
    view = _VocabularyView(tokenizer, vocab_size, eos_token_ids[0])
    wrapper = llguidance.TokenizerWrapper(view)
    ll = llguidance.LLTokenizer(wrapper, eos_token=list(eos_token_ids))
    # llguidance copied the token bytes into its own trie; it keeps the wrapper only to encode.
    # The list of Python bytes objects (~10 MiB for 262,144 tokens) is not needed any more.
    wrapper.tokens = view.tokens = ()
    return_free_heap()
    return ll


class _VocabularyView:
    """What llguidance.TokenizerWrapper reads: token bytes, special ids, an encoder."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_id: int):
        size = tokenizer.vocab_size
        self.eos_token_id = eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.tokens = tokenizer.token_bytes_table() + [b""] * (vocab_size - size)
        self.special_token_ids = sorted(tokenizer.special_ids) + list(range(size, vocab_size))
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        # NOTE: a str only (encode() refuses bytes), so llguidance never hands us a partial character.
        return self._tokenizer.encode(text)
