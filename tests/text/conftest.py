"""Shared fixtures of the text tests: our tokenizer for the bundled SmolLM2 GGUF, transformers'
tokenizer for the same file as the oracle (~7 s to build, so once per session), and a tiny
SentencePiece-style GGUF written here."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFWriter
from transformers import AutoTokenizer

from chatforge.models.gguf_file import GGUFFile
from chatforge.text.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def smol_metadata(bundled_gguf):
    gguf = GGUFFile(bundled_gguf)
    yield gguf.metadata
    gguf.close()


@pytest.fixture(scope="session")
def smol(smol_metadata):
    return Tokenizer.from_gguf(smol_metadata)


@pytest.fixture(scope="session")
def hf_smol(bundled_gguf):
    return AutoTokenizer.from_pretrained(str(bundled_gguf.parent), gguf_file=bundled_gguf.name)


@pytest.fixture(scope="session")
def hf_smol_folder(hf_smol, tmp_path_factory):
    """transformers' conversion of the GGUF tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("smol_hf")
    hf_smol.save_pretrained(folder)
    return folder


# A tiny llama-style (SentencePiece) vocabulary: control and unknown tokens, the 256 byte tokens,
# pieces ranked by score (earlier = better), a control token and a user-defined one.
SPM_PIECES = [
    "▁", "e", "t", "h", "l", "o", "a", "n", "s", "r", "i", "d", "w", "u", "c", "g", "é", "ü", "ß",
    "▁t", "he", "▁the", "ll", "llo", "▁he", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "in", "an",
    "▁an", "▁and", "er", "es", "▁s", "at", "en", "on", "ou", "▁a", "▁i", "is", "▁is", "ch", "ich", "▁ich",
    "ün", "▁gr", "▁grü", "ße", "▁é", "▁été",
]
SPM_TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="session")
def tiny_spm_gguf(tmp_path_factory):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES + ["<|user|>", "<think>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [3, 4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))] + [0.0, 0.0]
    path = tmp_path_factory.mktemp("spm") / "tiny-spm.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(SPM_TEMPLATE)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_spm(tiny_spm_gguf):
    gguf = GGUFFile(tiny_spm_gguf)
    try:
        return Tokenizer.from_gguf(gguf.metadata)
    finally:
        gguf.close()


@pytest.fixture(scope="session")
def hf_tiny_spm(tiny_spm_gguf):
    return AutoTokenizer.from_pretrained(str(tiny_spm_gguf.parent), gguf_file=tiny_spm_gguf.name)
