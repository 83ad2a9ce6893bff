"""Byte-level BPE GGUF vocabularies with the pre-tokenizers of other families (Llama 3, Qwen2,
Tekken, GPT-4o, GPT-2), written in the test, against transformers' conversion of each file."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFWriter
from transformers import AutoTokenizer

from chatforge.models.gguf_file import GGUFFile
from chatforge.text.token_bytes import byte_level_alphabet
from chatforge.text.tokenizer import Tokenizer

MERGES = [
    "Ġ t", "h e", "Ġt he", "i n", "in g", "Ġ a", "e s", "t ing", "es ting", "Ġt esting", "' s", "' m",
    "1 2", "12 3", "4 5", "Ġ 1", "Ġ Ġ", "ĠĠ ĠĠ", "Ċ Ċ", "Ġ n", "u m", "Ġn um", "b e", "Ġnum be", "r s",
    "Ġnumbe rs", "H E", "L L", "HE LL", "o r", "Ġ W", "ĠW or", "l d", "ĠWor ld",
]
# In the vocabulary, but no merge builds it: Llama 3's tokenizer (and llama.cpp for `llama-bpe`)
# takes a pre-token that is a whole vocabulary entry as is, without merging.
UNMERGED = "Ġhello"
SPECIALS = [("<|begin_of_text|>", 3), ("<|eot_id|>", 3), ("<|eom_id|>", 3), ("<think>", 4)]
TEXTS = [
    "I'm testing 12345 numbers, the 1 2 3",
    "  spaces\n\n  and\ttabs   ",
    "HELLO World's 42nd",
    "x=123+4567; y = 00012",
    "<|eot_id|>after<think>inside<|begin_of_text|>",
    "naïve café 😀 中文",
]
PRE_TOKENIZERS = ["llama-bpe", "qwen2", "tekken", "gpt-4o", "default"]


def byte_level_vocab():
    alphabet = sorted(byte_level_alphabet().items(), key=lambda kv: kv[1])  # in byte order
    tokens = [char for char, _ in alphabet]
    for merge in MERGES:
        left, right = merge.split(" ")
        tokens.append(left + right)
    return tokens + [UNMERGED]


@pytest.fixture(scope="module", params=PRE_TOKENIZERS)
def byte_level_pair(request, tmp_path_factory):
    tokens = byte_level_vocab() + [t for t, _ in SPECIALS]
    types = [1] * (len(tokens) - len(SPECIALS)) + [k for _, k in SPECIALS]
    path = tmp_path_factory.mktemp(request.param) / "tiny-bpe.gguf"
    writer = GGUFWriter(str(path), "llama")
    for add in (writer.add_block_count, writer.add_head_count):
        add(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(request.param)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    writer.add_add_bos_token(True)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gguf = GGUFFile(path)
    ours = Tokenizer.from_gguf(gguf.metadata)
    gguf.close()
    return request.param, ours, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_match_transformers(byte_level_pair, text):
    _, ours, reference = byte_level_pair
    for add_special_tokens in (False, True):
        ids = ours.encode(text, add_special_tokens=add_special_tokens)
        assert ids == reference.encode(text, add_special_tokens=add_special_tokens)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids, skip_special_tokens=False)


def test_whole_vocabulary_entries_skip_merges_only_for_llama3(byte_level_pair):
    pre, ours, reference = byte_level_pair
    pieces = [ours.id_to_token(i) for i in ours.encode(" hello")]
    if pre == "llama-bpe":
        assert pieces == [UNMERGED]
    else:
        assert ours.encode(" hello") == reference.encode(" hello", add_special_tokens=False)
        assert pieces == ["Ġ", "he", "l", "l", "o"]


def test_digit_grouping_follows_the_pre_tokenizer(byte_level_pair):
    pre, ours, _ = byte_level_pair
    pieces = [ours.id_to_token(i) for i in ours.encode("12345")]
    # Llama 3 and GPT-4o take digits three at a time, Qwen2 and Tekken one at a time, GPT-2 all together.
    expected = {"llama-bpe": ["123", "45"], "gpt-4o": ["123", "45"], "qwen2": ["1", "2", "3", "4", "5"],
                "tekken": ["1", "2", "3", "4", "5"], "default": ["123", "45"]}
    assert pieces == expected[pre]


def test_end_of_turn_ids_and_bos(byte_level_pair):
    _, ours, _ = byte_level_pair
    eot, eom = ours.token_to_id("<|eot_id|>"), ours.token_to_id("<|eom_id|>")
    assert ours.end_of_turn_ids == {eot, eom}
    assert ours.encode("hi", add_special_tokens=True)[0] == ours.bos_token_id == ours.token_to_id("<|begin_of_text|>")
    assert not ours.is_special(ours.token_to_id("<think>"))
