"""One completion's generated tokens read back as what its caller sees: content text and tool calls.

`OutputReader(tokenizer, stop, tool_format)` is fed token ids as the engine produces them and
returns `OutputStep`s: the content that is safe to send, the tool-call events (text/tool_calls.py),
and the stop string that ended the content, if one did. The service keeps one per completion and
sends every step, streaming or not: a whole answer is the concatenation of its steps, so the two
modes agree byte for byte.

Without a tool format the text is the detokenizer's, stop strings cut as it finds them. With one
(a request whose tools may be called), the text goes through the tool-call parser first and stop
strings apply to the content alone: a stop string such as "\\n" must not cut a call's arguments,
which the grammar forces to completion. The content before a call is released, unstopped, when
the call begins (a call's start proves no stop string spans it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chatforge.text.detokenizer import IncrementalDetokenizer
from chatforge.text.stop_strings import StopStrings
from chatforge.text.tokenizer import Tokenizer
from chatforge.text.tool_calls import (
    ContentDelta, ToolCall, ToolCallArguments, ToolCallParser, ToolCallStart,
)
from chatforge.text.tool_format import ToolCallFormat

ToolCallDelta = ToolCallStart | ToolCallArguments


@dataclass
class OutputStep:
    text: str = ""  # content that is safe to send now
    tool_calls: list[ToolCallDelta] = field(default_factory=list)  # after `text`, in order
    stop: str | None = None  # the stop string that ended the content, once one matched


class OutputReader:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), tool_format: ToolCallFormat | None = None):
        self._parser = ToolCallParser(tool_format) if tool_format is not None else None
        # With tools, stop strings are matched on the parser's content, not on the raw text.
        self._detok = IncrementalDetokenizer(tokenizer, stop if self._parser is None else ())
        self._stops = StopStrings(stop) if self._parser is not None else None
        self._ended = False

    @property
    def calls(self) -> list[ToolCall]:
        return self._parser.calls if self._parser is not None else []

    @property
    def truncated(self) -> bool:
        """The output ended inside a tool call (max_tokens): what was sent of it stands."""
        return self._parser is not None and self._parser.truncated

    def push(self, token_ids: Sequence[int]) -> OutputStep:
        if self._ended:
            return OutputStep(stop=self._stop)
        step = self._detok.push(token_ids)
        if self._parser is None:
            self._ended = step.stop is not None
            return OutputStep(step.delta, stop=step.stop)
        return self._read(self._parser.feed(step.delta), final=False)

    def finish(self, cut: bool = False) -> OutputStep:
        """The end of the output: what was held back (an incomplete character, the start of a
        possible stop string or marker), and whether a call was left open. `cut`: max_tokens
        ended it, so the start of a marker was the start of a call (dropped), not text."""
        if self._ended:
            return OutputStep(stop=self._stop)
        self._ended = True
        tail = self._detok.flush()
        if self._parser is None:
            return OutputStep(tail)
        return self._read(self._parser.feed(tail) + self._parser.finish(cut), final=True)

    @property
    def _stop(self) -> str | None:
        return self._detok.stop if self._parser is None else self._stops.stop

    def _read(self, events, final: bool) -> OutputStep:
        out = OutputStep()
        for event in events:
            if isinstance(event, ContentDelta):
                out.text += self._stops.push(event.text)
            else:
                if isinstance(event, ToolCallStart):
                    out.text += self._stops.push("", final=True)  # the content ended where the call began
                out.tool_calls.append(event)
            if self._stops.done:  # the content ended on a stop string: nothing after it counts
                self._ended = True
                out.stop = self._stops.stop
                return out
        if final:
            out.text += self._stops.push("", final=True)
        return out
