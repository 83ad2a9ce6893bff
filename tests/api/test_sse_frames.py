"""Every dialect's stream frames are its stream objects as `sse_data` writes them, byte for byte:
the text-delta template (api/sse.py TextFrame) changes how a chunk is made, never what is sent.
Texts that JSON escapes (quotes, backslashes, control characters, line separators) and that it
keeps as they are (accents, emoji) go through both paths."""

from __future__ import annotations

import pytest

from chatforge.api.egp import translate as egp
from chatforge.api.infomaniak import translate as infomaniak
from chatforge.api.openai import completions
from chatforge.api.openai import translate as openai
from chatforge.api.sse import TEXT_SLOT, TextFrame, sse_data
from chatforge.service.protocol import ChatEvent, ChoiceDelta, FinishReason, Usage

from .test_translate_golden import lp, prep

TEXTS = ["Hello", " world", ' "quoted"', "back\\slash", "line\nbreak\ttab\r", "\x00\x1f\x7f", "caf\u00e9 \u00fc",
         "\U0001f600", "\u2028\u2029", "</script>", "x" * 300, TEXT_SLOT]


def events(n: int = 1, logprobs: bool = False) -> list[ChatEvent]:
    """Each choice's first delta, then every text alone, interleaved, then each choice's end."""
    def usage(k):
        return Usage(5, k, 0.0000025 * k, 1)

    lps = [lp("x", 7, -0.5, ("x", 7, -0.5))] if logprobs else None
    out = [ChatEvent([ChoiceDelta(i, "Hi", lps)], usage(1)) for i in range(n)]
    out += [ChatEvent([ChoiceDelta(k % n, text, lps)], usage(k + 2)) for k, text in enumerate(TEXTS)]
    out.append(ChatEvent([ChoiceDelta(0, "", None, FinishReason.LENGTH)], usage(20)))
    out += [ChatEvent([ChoiceDelta(i, "end", None, FinishReason.STOP)], usage(21)) for i in range(1, n)]
    out.append(ChatEvent([ChoiceDelta(0, "", None)] if n == 1 else [], usage(21), done=True))
    return out


def _same_bytes(make_codec, evs: list[ChatEvent]):
    framed, objects = make_codec(), make_codec()  # codecs keep state (started choices): one each
    for event in evs:
        assert b"".join(framed.stream_frames(event)) == b"".join(sse_data(o) for o in objects.stream_objects(event))
    return framed


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("include_usage,continuous", [(False, False), (True, False), (True, True)])
def test_openai_chat_frames(n, include_usage, continuous):
    codec = _same_bytes(lambda: openai.ChatCodec(prep(n, stream=True, model_name='m "1"'), "chatcmpl-x", include_usage,
                                                 continuous), events(n))
    templated = {i for i, frame in codec._text_frames.items() if frame is not None}
    assert templated == (set() if continuous else set(range(n)))  # the template wrote the text deltas


def test_openai_chat_frames_with_logprobs():
    _same_bytes(lambda: openai.ChatCodec(prep(stream=True), "chatcmpl-x", True, False), events(logprobs=True))


@pytest.mark.parametrize("echo,logprobs,continuous", [(False, None, False), (True, None, True), (False, 1, False)])
def test_completions_frames(echo, logprobs, continuous):
    _same_bytes(lambda: completions.CompletionCodec(prep(2, stream=True), "cmpl-x", echo=echo, logprobs=logprobs,
                                                    include_usage=True, continuous_usage=continuous),
                events(2, logprobs=logprobs is not None))


def test_infomaniak_frames():
    _same_bytes(lambda: infomaniak.LegacyCodec("m\u00e9", 7), events())


@pytest.mark.parametrize("prompt,logprobs", [("Hi \"there\"", False), (TEXT_SLOT, False), ("Hi", True)])
def test_egp_frames(prompt, logprobs):
    _same_bytes(lambda: egp.EgpCodec(prompt, logprobs=logprobs), events(logprobs=logprobs))


def test_a_template_needs_its_slot_exactly_once():
    assert TextFrame.of({"a": "no slot"}) is None
    assert TextFrame.of({"a": TEXT_SLOT, "b": TEXT_SLOT}) is None
    assert TextFrame.of({"a": TEXT_SLOT, "b": 1})('say "hi"') == b'data: {"a":"say \\"hi\\"","b":1}\n\n'
