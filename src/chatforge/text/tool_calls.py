"""Tool calls read back from a model's output text, incrementally: ONE parser for streaming and
non-streaming answers, so the assembled stream equals the whole answer byte for byte.

`ToolCallParser(fmt)` is fed the detokenizer's text deltas and returns events:
- `ContentDelta(text)`: free text, safe to send;
- `ToolCallStart(index, id, name)`: a call began (index 0, 1, ... per answer, id `call_...`);
- `ToolCallArguments(index, text)`: the next fragment of that call's `arguments`: the model's own
  JSON text, never re-serialized.

Text that could be the beginning of the format's opening marker is held back (as stop strings
are in text/detokenizer.py), so no markup ever reaches the content; so is trailing whitespace,
because whitespace next to a call block is dropped (a plain answer keeps all of its text: what
is held is released by the next text or by `finish()`).

Decisions are taken only on text that is already complete (a marker, a key, a string), never on
a guess, so any split of the same text gives the same events up to how adjacent fragments are
cut. `finish()` ends the text: held-back content is released; a call cut short (max_tokens in the
middle of its arguments) keeps what was sent of it and `truncated` is set, in both modes alike;
cut short in its opening marker, it is no call and no content.
Text that breaks the format inside a block (only possible when no grammar forced it) is dropped,
never shown as content, and `malformed` is set.

A `leading` format (auto with a content constraint) has calls only at the very start of the
output: once it begins otherwise, all of it is content, markers included.

The grammar of text/tool_format.py fixes the key order (`name` before `arguments`); the parser
relies on it, and accepts any JSON whitespace around the punctuation.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

from chatforge.text.tool_format import ToolCallFormat

_WS = " \t\n\r"
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    text: str


ToolCallEvent = ContentDelta | ToolCallStart | ToolCallArguments


@dataclass
class ToolCall:
    """A call as assembled from the events so far."""

    id: str
    name: str
    arguments: str = ""


class _NeedMore(Exception):
    """The buffer ends before the current step can decide."""


class _Malformed(Exception):
    """The text breaks the format."""


class ToolCallParser:
    def __init__(self, fmt: ToolCallFormat, new_id: Callable[[], str] = new_call_id):
        self.fmt = fmt
        self._new_id = new_id
        self._buf = ""  # text received and not yet consumed
        self._state = "content"
        self._skip_ws = False  # drop whitespace that follows a block
        self._plain = False  # a `leading` format's output began with content: it is all content
        self._value: _ValueScanner | None = None  # the arguments being streamed
        self._events: list[ToolCallEvent] = []
        self.content = ""  # all content sent
        self.calls: list[ToolCall] = []
        self.truncated = False  # the text ended inside a block
        self.malformed = False  # the text broke the format inside a block

    def feed(self, text: str) -> list[ToolCallEvent]:
        self._buf += text
        self._run()
        return self._take()

    def finish(self, cut: bool = False) -> list[ToolCallEvent]:
        """The end of the output: release held content, note a block left open. `cut`: the
        output was cut short (max_tokens), so a held start of the opening marker was a call
        beginning: it is dropped, never shown as content (an output that ended by itself with
        it wrote it as text)."""
        self._run()
        if self._state == "content":
            held = self._buf
            opening = _marker_prefix_len(held, self.fmt.open) if cut else 0
            if opening:
                held, self.truncated = held[:-opening].rstrip(_WS), True
            held = held.rstrip(_WS) if self.calls else held
            if held:
                self._content(held)
        elif self._state != "broken":
            self.truncated = True
        self._buf, self._state = "", "done"
        return self._take()

    # -- the machine: each state consumes a complete piece, or nothing --------------------------
    def _run(self) -> None:
        try:
            while self._buf and self._state not in ("done", "broken"):
                getattr(self, "_on_" + self._state)()
        except _NeedMore:
            pass
        except _Malformed:
            self._state, self._buf, self.malformed = "broken", "", True

    def _on_content(self) -> None:
        if self.fmt.leading and not self.calls and self._leads_with_content():
            self._content(self._buf)
            self._buf = ""
            raise _NeedMore
        if self._skip_ws:
            self._buf = self._buf.lstrip(_WS)
            if not self._buf:
                raise _NeedMore
            self._skip_ws = False
        start = self._buf.find(self.fmt.open)
        if start >= 0:
            before = self._buf[:start].rstrip(_WS)
            if before:
                self._content(before)
            self._commit(start + len(self.fmt.open), "list_open" if self.fmt.array else "call_open")
            return
        # Hold back what could begin the marker, and the whitespace before it.
        rest = self._buf[: len(self._buf) - _marker_prefix_len(self._buf, self.fmt.open)]
        sendable = rest.rstrip(_WS)
        if sendable:
            self._content(sendable)
            self._buf = self._buf[len(sendable):]
        raise _NeedMore

    def _leads_with_content(self) -> bool:
        """A `leading` format: does the output begin with content rather than the marker?
        (Waits for more text while the start could still be the marker.)"""
        if not self._plain:
            start = self._buf.lstrip(_WS)
            if start.startswith(self.fmt.open):
                return False
            if self.fmt.open.startswith(start):
                raise _NeedMore
            self._plain = True
        return True

    def _on_list_open(self) -> None:
        self._commit(self._literal(0, "["), "list_item")

    def _on_list_item(self) -> None:
        pos = self._space(0)
        self._commit(pos, "list_close" if self._buf[pos] == "]" else "call_open")

    def _on_call_open(self) -> None:
        pos = self._literal(self._literal(self._literal(0, "{"), '"name"'), ":")
        pos, name = self._string(pos)
        self._commit(pos, "arguments_key")
        self.calls.append(ToolCall(self._new_id(), name))
        self._events.append(ToolCallStart(len(self.calls) - 1, self.calls[-1].id, name))

    def _on_arguments_key(self) -> None:
        pos = self._literal(self._literal(self._literal(0, ","), '"arguments"'), ":")
        self._commit(self._space(pos), "arguments")
        self._value = _ValueScanner()

    def _on_arguments(self) -> None:
        taken, ended = self._value.scan(self._buf)
        if taken:
            self._arguments(self._buf[:taken])
            self._buf = self._buf[taken:]
        if not ended:
            raise _NeedMore
        self._state = "call_close"

    def _on_call_close(self) -> None:
        pos = self._literal(0, "}")
        if not self.fmt.array:
            self._commit(pos, "block_close")
            return
        after = self._space(pos)
        if self._buf[after] == ",":
            self._commit(after + 1, "call_open")
        else:
            self._commit(pos, "list_close")

    def _on_list_close(self) -> None:
        self._commit(self._literal(0, "]"), "block_close")

    def _on_block_close(self) -> None:
        self._commit(self._literal(0, self.fmt.close), "content")
        self._skip_ws = True

    # -- pieces: read at a position of the buffer, consume nothing ------------------------------
    def _commit(self, pos: int, state: str) -> None:
        self._buf, self._state = self._buf[pos:], state

    def _space(self, pos: int) -> int:
        """The position after whitespace; waits for more text when the buffer ends first."""
        while pos < len(self._buf) and self._buf[pos] in _WS:
            pos += 1
        if pos == len(self._buf):
            raise _NeedMore
        return pos

    def _literal(self, pos: int, literal: str) -> int:
        """The position after whitespace and `literal`."""
        pos = self._space(pos)
        rest = self._buf[pos:]
        if rest.startswith(literal):
            return pos + len(literal)
        if literal.startswith(rest):
            raise _NeedMore
        raise _Malformed

    def _string(self, pos: int) -> tuple[int, str]:
        """The position after whitespace and a complete JSON string, and its value."""
        pos = self._space(pos)
        if self._buf[pos] != '"':
            raise _Malformed
        end = _string_end(self._buf, pos + 1)
        if end is None:
            raise _NeedMore
        try:
            return end, json.loads(self._buf[pos:end])
        except ValueError:
            raise _Malformed from None

    def _content(self, text: str) -> None:
        self.content += text
        self._events.append(ContentDelta(text))

    def _arguments(self, text: str) -> None:
        self.calls[-1].arguments += text
        self._events.append(ToolCallArguments(len(self.calls) - 1, text))

    def _take(self) -> list[ToolCallEvent]:
        events, self._events = self._events, []
        return events


class _ValueScanner:
    """Finds where one JSON value ends, fed its text in pieces. Every character before that end
    belongs to the value, so each piece can be sent at once."""

    def __init__(self) -> None:
        self.kind: str | None = None  # "container", "string" or "scalar", from the first character
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, text: str) -> tuple[int, bool]:
        """(characters of `text` that belong to the value, whether the value ended)."""
        for i, ch in enumerate(text):
            if self.kind is None:
                if ch in _WS + ",}]":
                    raise _Malformed
                self.kind = "container" if ch in "{[" else "string" if ch == '"' else "scalar"
            elif self.kind == "scalar" and ch in _WS + ",}]":
                return i, True
            if self.kind != "scalar" and self._step(ch):
                return i + 1, True
        return len(text), False

    def _step(self, ch: str) -> bool:
        """One character of a container or a string; True when the value just ended."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
                return self.kind == "string"
            return False
        if ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            return self.depth == 0
        return False


def _string_end(text: str, start: int) -> int | None:
    """Index after the closing quote of the JSON string whose body starts at `start`; None if it does not end in `text`."""
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i + 1
    return None


def _marker_prefix_len(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `marker`."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
