"""Streaming detokenization: valid UTF-8 deltas, stop strings cut across token boundaries and
never half-sent, special tokens never in the text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatforge.text.detokenizer import IncrementalDetokenizer

from text_samples import CORPUS

STREAMED = [
    "Grüße aus Zürich! Ça coûte 5 € — très cher, señor.",
    "Emoji: 😀👍🏽🇨🇭 ❤️ 🧑‍💻 and 中文, 日本語, 한국어.",
    "Accents split over bytes: àéîõü ÀÉÎÕÜ ąęłńśźż čďěňřšťž.",
]


def stream(detok, ids, chunk=1):
    """Every delta, in order, then the flush."""
    deltas = [detok.push(ids[i:i + chunk]).delta for i in range(0, len(ids), chunk)]
    return deltas, detok.flush()


def first_stop_cut(text, stops):
    """The reference: the text up to the stop string that completes first (longest on a tie)."""
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    if not found:
        return text, None
    _, start, stop = min(found)
    return text[:start], stop


@pytest.mark.parametrize("text", STREAMED)
@pytest.mark.parametrize("which", ["smol", "tiny_spm"])
def test_streamed_deltas_are_valid_text_that_concatenates_to_decode(request, which, text):
    tokenizer = request.getfixturevalue(which)
    ids = tokenizer.encode(text)
    deltas, tail = stream(IncrementalDetokenizer(tokenizer, []), ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + tail == tokenizer.decode(ids) == text
    assert tail == ""
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # the text does split characters across tokens


def test_stop_string_spanning_two_tokens_is_cut_exactly(smol):
    ids = smol.encode("The answer is 42. END of story")
    tokens = [smol.decode([i]) for i in ids]
    assert " END" in tokens  # "END" ends where a token ends
    detok = IncrementalDetokenizer(smol, ["2. E"])  # starts inside "42", ends inside " END"
    deltas, tail = stream(detok, ids)
    assert "".join(deltas) + tail == "The answer is 4"
    assert detok.stop == "2. E" and detok.text == "The answer is 4"
    assert detok.push(smol.encode(" more")).delta == "" and detok.flush() == ""


def test_hold_back_never_sends_a_prefix_of_a_stop_string_that_later_matches(smol):
    # "STOPPING" starts like the stop string but is not it: held, then released.
    ids = smol.encode("Note: the token budget is STOPPING SOON, STOP here.")
    detok = IncrementalDetokenizer(smol, ["STOP here"])
    sent = ""
    for i in ids:
        step = detok.push([i])
        sent += step.delta
        # Whatever is sent is always a prefix of the final answer: nothing of the stop string leaks.
        assert "Note: the token budget is STOPPING SOON, ".startswith(sent)
        if step.stop:
            break
    assert sent == "Note: the token budget is STOPPING SOON, " and detok.stop == "STOP here"


def test_false_start_of_a_stop_string_is_released_when_it_cannot_match(smol):
    detok = IncrementalDetokenizer(smol, ["<END>"])
    assert detok.push(smol.encode("a <EN")).delta == "a "  # "<EN" could still become "<END>"
    assert detok.push(smol.encode("D? no")).delta == "<END? no"
    assert detok.push(smol.encode(" <")).delta == " "
    assert detok.flush() == "<"  # the end of the generation releases what was held
    assert detok.stop is None


def test_multiple_stop_strings_the_earliest_wins(smol):
    ids = smol.encode("alpha beta gamma delta")
    detok = IncrementalDetokenizer(smol, ["delta", "beta", "gamma"])
    deltas, tail = stream(detok, ids, chunk=len(ids))  # all at once: still the earliest
    assert "".join(deltas) + tail == "alpha " and detok.stop == "beta"
    # Overlapping: "ab" completes before "xabc" would, so "ab" wins.
    detok = IncrementalDetokenizer(smol, ["xabc", "ab"])
    deltas, tail = stream(detok, smol.encode("zxabcz"))
    assert ("".join(deltas) + tail, detok.stop) == ("zx", "ab")


def test_special_tokens_never_leak(smol):
    ids = smol.encode("Sure.<|im_end|>\n<|im_start|>user\nagain<|endoftext|>")
    deltas, tail = stream(IncrementalDetokenizer(smol, ["zzz"]), ids)
    assert "".join(deltas) + tail == "Sure.\nuser\nagain"
    shown, tail = stream(IncrementalDetokenizer(smol, [], skip_special_tokens=False), ids)
    assert "".join(shown) + tail == "Sure.<|im_end|>\n<|im_start|>user\nagain<|endoftext|>"


def test_a_generation_cut_inside_a_character_flushes_like_decode(smol):
    ids = smol.encode("ok 😀")[:-1]  # the emoji's last byte never came
    deltas, tail = stream(IncrementalDetokenizer(smol, []), ids)
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) + tail == smol.decode(ids)
    assert tail.endswith("\ufffd")


def test_bad_stop_strings_are_refused(smol):
    with pytest.raises(ValueError, match="non-empty"):
        IncrementalDetokenizer(smol, ["ok", ""])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_gives_decode_cut_at_the_first_stop(smol, data):
    text = data.draw(st.sampled_from(CORPUS[:13] + STREAMED))
    ids = smol.encode(text)
    full = smol.decode(ids)
    stops = data.draw(st.lists(
        st.one_of(
            st.integers(0, max(len(full) - 1, 0)).flatmap(lambda i: st.integers(i + 1, i + 6).map(lambda j: full[i:j])),
            st.text(alphabet="aeé😀 .", min_size=1, max_size=4),
        ).filter(bool),
        max_size=3,
    ))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(ids) - 1, 1)), max_size=8)))
    detok = IncrementalDetokenizer(smol, stops)
    sent, stop = "", None
    for a, b in zip([0, *cuts], [*cuts, len(ids)]):
        step = detok.push(ids[a:b])
        sent += step.delta
        stop = stop or step.stop
    sent += detok.flush()
    assert (sent, stop) == first_stop_cut(full, stops)
