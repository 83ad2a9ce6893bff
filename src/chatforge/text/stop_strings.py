"""Stop strings on streamed text: what may be sent now, and where the text ends.

Text that could still become the start of a stop string is held back (at most
`max(len(s) for s in stops) - 1` characters) until the next text proves otherwise. When a stop
string completes, everything from its first character on is dropped, and nothing of it has been
sent. If several stop strings match, the one that completes first in the text wins (of two
ending at the same character, the longer); this does not depend on how the text was split
across `push` calls.

The detokenizer runs one over all of a generation's text; with tools, the service runs one
over the content alone (text/output_reader.py), so a stop string never cuts a tool call.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    def __init__(self, stops: Sequence[str] | str | None = ()):
        if isinstance(stops, str):
            stops = [stops]
        stops = stops or ()
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        self._stops = tuple(dict.fromkeys(stops))
        self._longest = max((len(s) for s in self._stops), default=0)
        self._unsent = ""  # text that could still begin a stop string
        self.stop: str | None = None  # the stop string that ended the text, once one matched

    @property
    def done(self) -> bool:
        return self.stop is not None

    def push(self, text: str, final: bool = False) -> str:
        """The part of `text` (after what was held) that is safe to send; `final`: the text
        ends here, nothing is held. Empty once a stop string has matched."""
        if self.stop is not None:
            return ""
        if not self._stops:  # nothing to hold back (most requests)
            return text
        text = self._unsent + text
        match = self._first_stop(text)
        if match is not None:
            start, self.stop = match
            self._unsent = ""
            return text[:start]
        keep = 0 if final else self._could_begin_stop(text)
        self._unsent = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop) of the match that ends first; None without a match.

        Only unsent text is searched: sent text was proven not to begin any stop string."""
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
        for k in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-k:]
            if any(len(s) > k and s.startswith(tail) for s in self._stops):
                return k
        return 0
