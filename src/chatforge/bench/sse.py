"""An incremental server-sent-events parser, written to the WHATWG event-stream rules.

Bytes arrive in arbitrary network chunks: a line, a CRLF pair or a multi-byte UTF-8 character
may be split across two of them, so the parser keeps the unfinished tail and only decodes whole
lines. An event is dispatched at a blank line; `data:` lines of one event are joined with "\n".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        # A chunk that ended in "\r" may be the first half of "\r\n": skip a leading "\n" next time.
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk`, in order."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._buffer + chunk
        events: list[SSEEvent] = []
        start = 0
        n = len(buf)
        while start < n:
            cr, lf = buf.find(b"\r", start), buf.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            line = buf[start:end]
            if buf[end] == 13:  # "\r": a following "\n" belongs to the same line ending
                if end + 1 < n:
                    start = end + 2 if buf[end + 1] == 10 else end + 1
                else:
                    start = end + 1
                    self._skip_lf = True
            else:
                start = end + 1
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        self._buffer = buf[start:]
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message")
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):  # a comment (keep-alive pings)
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        # "id" and "retry" matter to reconnecting browsers, not to a benchmark: ignored.
        return None
