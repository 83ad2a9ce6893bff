"""The real Gemma 3 vocabulary (262,144 SentencePiece tokens, from its GGUF): our tokens equal
llama.cpp's for a range of texts, recorded once from llama.cpp itself (data/); text decodes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatforge.models.gguf_file import GGUFFile
from chatforge.text.tokenizer import Tokenizer

CASES = json.loads((Path(__file__).parent / "data" / "gemma3_llama_cpp_tokens.json").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def gemma(gemma_gguf):
    gguf = GGUFFile(gemma_gguf)
    try:
        return Tokenizer.from_gguf(gguf.metadata)
    finally:
        gguf.close()


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:24] for c in CASES])
def test_tokens_equal_llama_cpp(gemma, case):
    assert gemma.encode(case["text"], add_special_tokens=True) == case["ids"]


def test_vocabulary_specials_and_round_trip(gemma):
    assert gemma.vocab_size == 262_144
    assert (gemma.bos_token, gemma.eos_token, gemma.pad_token) == ("<bos>", "<eos>", "<pad>")
    # <end_of_turn> ends a turn like <eos>: a chat template's answer stops there.
    assert gemma.end_of_turn_ids == {1, gemma.token_to_id("<end_of_turn>")} == {1, 106}
    assert gemma.chat_template is None  # a base model: chat needs a named template
    for case in CASES:
        text = case["text"]
        if "<" not in text and "▁" not in text:  # no special tokens, no literal metaspace
            assert gemma.decode(case["ids"]) == text
    # User-defined tokens (whitespace runs, "<start_of_image>") are matched whole and decoded as text.
    ids = gemma.encode("a  b <start_of_image>")
    assert gemma.decode(ids) == "a  b <start_of_image>" and gemma.token_to_id("<start_of_image>") in ids
