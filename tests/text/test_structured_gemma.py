"""Constrained decoding on the real Gemma 3 vocabulary (262,144 SentencePiece tokens, 6,414
added ones): llguidance's copy of it is built on the first compile, not when the model loads,
and it is exactly the tokenizer's (bytes, special tokens, EOS); a constraint follows Gemma's own
tokens of a matching text."""

from __future__ import annotations

import numpy as np
import pytest

from chatforge.models.source import resolve_model
from chatforge.text.structured import JsonSchema, StructuredOutput
from chatforge.text.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def gemma(gemma_gguf) -> Tokenizer:
    return load_tokenizer(resolve_model(str(gemma_gguf)))


def test_the_vocabulary_is_built_on_the_first_compile_and_is_the_tokenizers(gemma):
    structured = StructuredOutput(gemma, mask_threads=1)
    assert not structured.vocabulary_built  # loading the model did not pay for it
    grammar = structured.compile(JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}))
    assert structured.vocabulary_built
    ll = structured.ll_tokenizer
    assert ll.vocab_size == gemma.vocab_size == 262_144
    assert sorted(ll.eos_tokens) == [1, 106]  # <eos>, <end_of_turn>
    table = gemma.token_bytes_table()
    assert len(table) == gemma.vocab_size
    for i in range(gemma.vocab_size):
        assert table[i] == gemma.token_bytes(i), i  # the table and the per-token path agree
        if table[i] == b"\xff":  # <0xFF>: llguidance's mark of a special token; never in UTF-8 text
            assert ll.is_special_token(i) and not gemma.is_special(i)
            continue
        assert ll.is_special_token(i) == gemma.is_special(i), i
        if not gemma.is_special(i):
            assert ll.decode_bytes([i]) == table[i], i
    assert table[gemma.token_to_id("<0x0A>")] == b"\n" and table[gemma.token_to_id("▁the")] == b" the"

    matcher = grammar.matcher()
    assert all(matcher.accept(t) for t in gemma.encode('{"a": 12}')), matcher.error()
    bitmask = np.zeros((1, (grammar.vocab_size + 31) // 32), dtype=np.int32)
    matcher.mask_filler.fill([(matcher, 0)], bitmask)
    allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")
    assert allowed[1] and allowed[106]  # complete: either end is allowed now
