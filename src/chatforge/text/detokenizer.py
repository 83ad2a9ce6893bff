"""Token ids in, text deltas out, for one generation: valid UTF-8 only, stop strings cut.

Two jobs, one after the other on every `push`:

1. **Decode incrementally.** A token may be part of a character (one byte of an emoji), and
   SentencePiece decoders drop the space at the start of what they decode. So we decode a short
   window of ids twice, `ids[prefix:read]` (text already taken) and `ids[prefix:]`, and take the
   difference as new text. The difference is only taken when it does not end in U+FFFD (an
   incomplete character); then the window slides forward. Both decodes start at the same token,
   so whatever the decoder does at a window's start cancels out.

2. **Stop strings** (text/stop_strings.py): text that could still become the start of a stop
   string is held back until the next text proves otherwise; when one completes, everything from
   its first character on is dropped, and nothing of it has been sent.

Invariant: the concatenation of all deltas and `flush()` equals `tokenizer.decode(all_ids)`,
cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatforge.text.stop_strings import StopStrings
from chatforge.text.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"  # what decoders put where bytes do not (yet) form a character


@dataclass(frozen=True)
class DetokenizerStep:
    delta: str  # new text that is safe to send now
    stop: str | None  # the stop string that ended the text, once one matched


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] | None = (), skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        # Ids are checked once, as they come (push); the window's two decodes go straight to the backend.
        self._backend_decode = tokenizer.backend.decode
        self._stops = StopStrings(stop)
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to text already taken
        self._read = 0
        self._sent: list[str] = []
        self._done = False

    @property
    def stop(self) -> str | None:
        """The stop string that ended the text, if any."""
        return self._stops.stop

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
            return DetokenizerStep("", self.stop)
        self._tokenizer.check_ids(token_ids)
        self._ids.extend(token_ids)
        return self._send(self._stops.push(self._decode_new(final=False)))

    def flush(self) -> str:
        """The end of a generation: the held-back text, and any incomplete character as
        decode() renders it. Empty after a stop string."""
        if self._done:
            return ""
        step = self._send(self._stops.push(self._decode_new(final=True), final=True))
        self._done = True
        return step.delta

    # -- decoding ----------------------------------------------------------------------------
    def _decode_new(self, final: bool) -> str:
        decode = self._backend_decode
        taken = decode(self._ids[self._prefix:self._read], skip_special_tokens=self._skip_special)
        window = decode(self._ids[self._prefix:], skip_special_tokens=self._skip_special)
        if len(window) <= len(taken) or (window.endswith(_INCOMPLETE) and not final):
            return ""  # nothing new, or a character still incomplete: wait for more ids
        self._prefix, self._read = self._read, len(self._ids)
        return window[len(taken):]

    def _send(self, delta: str) -> DetokenizerStep:
        if delta:
            self._sent.append(delta)
        self._done = self._stops.done
        return DetokenizerStep(delta, self._stops.stop)
