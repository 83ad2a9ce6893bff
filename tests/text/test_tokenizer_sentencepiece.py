"""A llama-style (SentencePiece) GGUF vocabulary written in the test, against transformers'
conversion of the same file."""

from __future__ import annotations

import pytest

from chatforge.text.gguf_vocab import merges_from_scores

SPM_TEXTS = [
    "hello world",
    " hello  world",
    "the hello and the world",
    "Grüße, ich",
    "héllo été",
    "xyz 😀 中",  # no pieces for these: byte fallback
    "<|user|>hi</s>",
    "a<think>b",
    "\n\nhello\tworld",
    "",
    " ",
]


@pytest.mark.parametrize("text", SPM_TEXTS)
@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_encode_matches_transformers(tiny_spm, hf_tiny_spm, text, add_special_tokens):
    assert tiny_spm.encode(text, add_special_tokens=add_special_tokens) == hf_tiny_spm.encode(
        text, add_special_tokens=add_special_tokens
    )


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_decode_matches_transformers(tiny_spm, hf_tiny_spm, text):
    ids = tiny_spm.encode(text, add_special_tokens=True)
    assert tiny_spm.decode(ids) == hf_tiny_spm.decode(ids, skip_special_tokens=True)
    assert tiny_spm.decode(ids, skip_special_tokens=False) == hf_tiny_spm.decode(ids, skip_special_tokens=False)


def test_pieces_byte_fallback_and_prefix_space(tiny_spm):
    ids = tiny_spm.encode("hello world 😀")
    assert [tiny_spm.id_to_token(i) for i in ids] == ["▁hello", "▁world", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert tiny_spm.decode(ids) == "hello world 😀"  # the space added in front is not part of the text
    assert b"".join(tiny_spm.token_bytes(i) for i in ids) == " hello world 😀".encode()


def test_specials_and_template(tiny_spm, hf_tiny_spm):
    assert tiny_spm.special_tokens == hf_tiny_spm.special_tokens_map == {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"
    }
    assert (tiny_spm.bos_token_id, tiny_spm.eos_token_id) == (1, 2)
    assert tiny_spm.end_of_turn_ids == {2}
    assert tiny_spm.encode("x", add_special_tokens=True)[0] == 1  # llama vocabularies add BOS
    assert tiny_spm.chat_template == hf_tiny_spm.chat_template
    assert tiny_spm.is_special(tiny_spm.token_to_id("<|user|>"))
    assert not tiny_spm.is_special(tiny_spm.token_to_id("<think>"))  # user-defined: whole, but text
    assert tiny_spm.decode(tiny_spm.encode("a<think>b<|user|>")) == "a<think>b"


def test_merges_rank_by_the_score_of_the_token_they_form():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0]
    # "bc" scores best, then "ab"; "abc" forms from ("a", "bc") and ("ab", "c"), longer left first.
    assert merges_from_scores(tokens, scores) == [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]
