"""The tokenizer built from the bundled SmolLM2 GGUF, against transformers' tokenizer for the same file."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import pre_tokenizers

from chatforge.models.source import resolve_model
from chatforge.text.errors import TokenizerError
from chatforge.text.tokenizer import Tokenizer, load_tokenizer

from text_samples import CORPUS, WHITESPACE_BEFORE_DIGITS


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_transformers_gguf_tokenizer(smol, hf_smol, text):
    assert smol.encode(text) == hf_smol.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", CORPUS)
def test_decode_matches_transformers_and_round_trips(smol, hf_smol, text):
    ids = smol.encode(text)
    assert smol.decode(ids, skip_special_tokens=False) == text
    assert smol.decode(ids, skip_special_tokens=False) == hf_smol.decode(ids, skip_special_tokens=False)
    assert smol.decode(ids) == hf_smol.decode(ids, skip_special_tokens=True)


def test_special_token_strings_in_text_become_special_ids(smol):
    ids = smol.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == smol.token_to_id("<|im_start|>") == 1
    assert ids[-1] == smol.token_to_id("<|im_end|>") == 2
    assert smol.decode(ids) == "user\nhi"


def test_whitespace_before_digits_follows_llama_cpp_smollm_split(smol, hf_smol_folder):
    # SmolLM2's own tokenizer.json (and llama.cpp's `smollm` pre-tokenizer) split every digit off
    # before GPT-2's regex: the reference is the converted vocabulary with that pre-tokenizer.
    reference = RustTokenizer.from_file(str(hf_smol_folder / "tokenizer.json"))
    reference.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    for text in WHITESPACE_BEFORE_DIGITS + CORPUS:
        assert smol.encode(text) == reference.encode(text, add_special_tokens=False).ids, text
    # "a  5": the two spaces stay one token ("ĠĠ"), then the digit.
    assert [smol.id_to_token(i) for i in smol.encode("a  5")] == ["a", "ĠĠ", "5"]


def test_special_tokens_and_ids_match_transformers(smol, hf_smol):
    assert smol.special_tokens == hf_smol.special_tokens_map
    assert (smol.bos_token, smol.bos_token_id) == (hf_smol.bos_token, hf_smol.bos_token_id)
    assert (smol.eos_token, smol.eos_token_id) == ("<|im_end|>", 2)
    assert (smol.pad_token, smol.unk_token) == (hf_smol.pad_token, hf_smol.unk_token)
    assert smol.vocab_size == len(hf_smol) == 49152
    assert all(smol.id_to_token(i) == hf_smol.convert_ids_to_tokens(i) for i in (0, 1, 2, 17, 1000, 49151))
    # EOS plus <|endoftext|>, the other end-of-turn special SmolLM2's vocabulary holds.
    assert smol.end_of_turn_ids == {2, 0}


def test_add_special_tokens_adds_nothing_for_smollm2(smol, hf_smol):
    # The GGUF says add_bos_token = False, as transformers reads it.
    assert smol.encode("Hi", add_special_tokens=True) == hf_smol.encode("Hi", add_special_tokens=True) == smol.encode("Hi")


def test_chat_template_comes_from_gguf_metadata(smol, smol_metadata):
    assert smol.chat_template == smol_metadata["tokenizer.chat_template"]
    assert smol.get_chat_template() == smol.chat_template
    with pytest.raises(TokenizerError, match="no chat template named 'tool_use'"):
        smol.get_chat_template("tool_use")


@pytest.mark.parametrize("text", ["é😀 中文", "Grüße 🇨🇭", "<|im_end|>x"])
def test_token_bytes_concatenate_to_the_utf8_text(smol, text):
    ids = smol.encode(text)
    assert b"".join(smol.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_token_bytes_of_a_partial_character(smol):
    ids = smol.encode("😀")
    first = smol.token_bytes(ids[0])
    assert len(ids) > 1 and 0 < len(first) < 4  # the emoji's 4 bytes are split across tokens
    assert "😀".encode().startswith(first)
    with pytest.raises(UnicodeDecodeError):
        first.decode("utf-8")
    assert smol.token_bytes(smol.token_to_id("Ġthe")) == b" the"


def test_from_hf_folder_matches_transformers(hf_smol, hf_smol_folder):
    folder = Tokenizer.from_hf_folder(hf_smol_folder)
    for text in CORPUS + WHITESPACE_BEFORE_DIGITS:
        assert folder.encode(text) == hf_smol.encode(text, add_special_tokens=False)
    assert folder.special_tokens == hf_smol.special_tokens_map
    assert folder.chat_template == hf_smol.chat_template
    assert folder.end_of_turn_ids == {0, 2}


def test_load_tokenizer_from_model_source(smol):
    loaded = load_tokenizer(resolve_model("smollm2"))
    assert loaded.encode(CORPUS[1]) == smol.encode(CORPUS[1])


def test_ids_outside_the_vocabulary_are_a_typed_error(smol):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        smol.decode([5, 49152])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        smol.token_bytes(-1)


def test_unsupported_gguf_tokenizer_model_is_a_typed_error(smol_metadata):
    with pytest.raises(TokenizerError, match="unsupported GGUF tokenizer model 'bert'"):
        Tokenizer.from_gguf({**smol_metadata, "tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match="needs tokenizer.ggml.merges"):
        Tokenizer.from_gguf({k: v for k, v in smol_metadata.items() if k != "tokenizer.ggml.merges"})
