"""The SSE parser on whole streams and on streams cut at every byte."""

from __future__ import annotations

import pytest

from chatforge.bench.sse import SSEEvent, SSEParser

STREAM = (
    b": keep-alive ping\r\n\r\n"
    b"data: {\"a\": 1}\n\n"
    b"event: error\r\ndata: {\"error\": \"x\"}\r\n\r\n"
    b"data: line one\rdata: line two\r\r"
    b"id: 7\nretry: 100\ndata:no-space \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent('{"error": "x"}', "error"),
    SSEEvent("line one\nline two"),
    SSEEvent("no-space é€😀"),
    SSEEvent("[DONE]"),
]


def test_whole_stream():
    assert SSEParser().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_stream_cut_into_pieces_of_every_size(size):
    parser = SSEParser()
    events = []
    for i in range(0, len(STREAM), size):
        events += parser.feed(STREAM[i : i + size])
    assert events == EXPECTED


def test_stream_cut_at_every_single_position():
    for cut in range(len(STREAM) + 1):
        parser = SSEParser()
        assert parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:]) == EXPECTED, cut


def test_incomplete_event_is_held_until_its_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"\n") == [SSEEvent("x")]
    assert parser.feed(b"event: only-a-name\n\n") == []  # no data: nothing to dispatch
    assert parser.feed(b"data: y\n\n") == [SSEEvent("y")]  # the dropped event name does not stick
