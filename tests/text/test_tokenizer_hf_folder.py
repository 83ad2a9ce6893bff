"""Hugging Face tokenizer folders: where special tokens, named chat templates and extra stop ids
come from, checked against what transformers reads from the same folder."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from chatforge.text.errors import TokenizerError
from chatforge.text.tokenizer import Tokenizer

DEFAULT = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
TOOL_USE = "{{ tools | length }} tools: {% for m in messages %}{{ m['content'] }}{% endfor %}"
SUMMARY = "Summarise: {{ messages[-1]['content'] }}"


@pytest.fixture
def folder(tmp_path, hf_smol_folder):
    shutil.copy(hf_smol_folder / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": {"__type": "AddedToken", "content": "<|im_start|>", "lstrip": False, "rstrip": False, "normalized": False, "single_word": False},
        "eos_token": "<|im_end|>",
        "chat_template": [{"name": "default", "template": DEFAULT}, {"name": "tool_use", "template": TOOL_USE}],
    }))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    return tmp_path


def test_named_templates_and_special_tokens_match_transformers(folder):
    ours, reference = Tokenizer.from_hf_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.special_tokens == reference.special_tokens_map == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"
    }
    assert ours.chat_templates == reference.chat_template == {"default": DEFAULT, "tool_use": TOOL_USE}
    assert ours.get_chat_template() == reference.get_chat_template() == DEFAULT
    assert ours.get_chat_template(with_tools=True) == reference.get_chat_template(tools=[{"type": "function"}]) == TOOL_USE
    assert ours.get_chat_template("tool_use") == TOOL_USE


def test_generation_config_eos_ids_are_end_of_turn_ids(folder):
    # <|im_end|> (2) is the EOS, <file_sep> (5) comes from generation_config.json, and
    # <|endoftext|> (0) is an end-of-turn special in the vocabulary.
    assert Tokenizer.from_hf_folder(folder).end_of_turn_ids == {0, 2, 5}


def test_template_files_take_precedence(folder):
    (folder / "chat_template.jinja").write_text(SUMMARY)
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "rag.jinja").write_text(DEFAULT + "!")
    ours, reference = Tokenizer.from_hf_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == SUMMARY == reference.get_chat_template()
    assert ours.get_chat_template("rag") == DEFAULT + "!" == reference.get_chat_template("rag")


def test_missing_or_broken_files_are_typed_errors(tmp_path, folder):
    with pytest.raises(TokenizerError, match="no tokenizer.json in"):
        Tokenizer.from_hf_folder(tmp_path / "nowhere")
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_hf_folder(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.from_hf_folder(folder)
