"""Token ids in, text deltas out, for one generation: valid UTF-8 only, stop strings cut.

Two jobs, one after the other on every `push`:

1. **Decode incrementally.** A token may be part of a character (one byte of an emoji), and
   SentencePiece decoders drop the space at the start of what they decode. So we decode a short
   window of ids twice, `ids[prefix:read]` (text already taken) and `ids[prefix:]`, and take the
   difference as new text. The difference is only taken when it does not end in U+FFFD (an
   incomplete character); then the window slides forward. Both decodes start at the same token,
   so whatever the decoder does at a window's start cancels out.

2. **Stop strings.** Text that could still become the start of a stop string is held back
   (at most `max(len(s) for s in stop) - 1` characters) until the next text proves otherwise.
   When a stop string completes, everything from its first character on is dropped, and nothing
   of it has been sent. If several stop strings match, the one that completes first in the text
   wins (of two ending at the same character, the longer); this does not depend on how the ids
   were split across `push` calls.

Invariant: the concatenation of all deltas and `flush()` equals `tokenizer.decode(all_ids)`,
cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatforge.text.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"  # what decoders put where bytes do not (yet) form a character


@dataclass(frozen=True)
class DetokenizerStep:
    delta: str  # new text that is safe to send now
    stop: str | None  # the stop string that ended the text, once one matched


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] | None = (), skip_special_tokens: bool = True):
        if isinstance(stop, str):
            stop = [stop]
        stop = stop or ()
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        self._tokenizer = tokenizer
        self._stops = tuple(dict.fromkeys(stop))
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to text already taken
        self._read = 0
        self._unsent = ""  # decoded text not sent yet: it could still begin a stop string
        self._sent: list[str] = []
        self._stop: str | None = None
        self._done = False

    @property
    def stop(self) -> str | None:
        """The stop string that ended the text, if any."""
        return self._stop

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return "".join(self._sent)

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def push(self, token_ids: Sequence[int]) -> DetokenizerStep:
        """Add generated ids; returns the text they release and the stop string if one matched."""
        if self._done:
            return DetokenizerStep("", self._stop)
        self._ids.extend(token_ids)
        return self._release(self._decode_new(final=False), final=False)

    def flush(self) -> str:
        """The end of a generation: the held-back text, and any incomplete character as
        decode() renders it. Empty after a stop string."""
        if self._done:
            return ""
        step = self._release(self._decode_new(final=True), final=True)
        self._done = True
        return step.delta

    # -- decoding ----------------------------------------------------------------------------
    def _decode_new(self, final: bool) -> str:
        decode = self._tokenizer.decode
        taken = decode(self._ids[self._prefix:self._read], skip_special_tokens=self._skip_special)
        window = decode(self._ids[self._prefix:], skip_special_tokens=self._skip_special)
        if len(window) <= len(taken) or (window.endswith(_INCOMPLETE) and not final):
            return ""  # nothing new, or a character still incomplete: wait for more ids
        self._prefix, self._read = self._read, len(self._ids)
        return window[len(taken):]

    # -- stop strings ------------------------------------------------------------------------
    def _release(self, new_text: str, final: bool) -> DetokenizerStep:
        text = self._unsent + new_text
        match = self._first_stop(text)
        if match is not None:
            start, stop = match
            self._unsent, self._stop, self._done = "", stop, True
            return self._send(text[:start], stop)
        keep = 0 if final else self._could_begin_stop(text)
        self._unsent = text[len(text) - keep:] if keep else ""
        return self._send(text[: len(text) - keep], None)

    def _send(self, delta: str, stop: str | None) -> DetokenizerStep:
        if delta:
            self._sent.append(delta)
        return DetokenizerStep(delta, stop)

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop) of the match that ends first; None without a match.

        Only unsent text is searched: sent text was proven not to begin any stop string.
        """
        best = None
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0:
                key = (start + len(stop), start)
                if best is None or key < best[0]:
                    best = (key, stop)
        return None if best is None else (best[0][1], best[1])

    def _could_begin_stop(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of some stop string."""
        for k in range(min(len(text), max((len(s) for s in self._stops), default=1) - 1), 0, -1):
            tail = text[-k:]
            if any(len(s) > k and s.startswith(tail) for s in self._stops):
                return k
        return 0
