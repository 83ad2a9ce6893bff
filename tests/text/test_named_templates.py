"""The named chat templates (text/templates/): each renders its family's published prompt format
exactly, refuses what the format cannot express, and a served model's template is the configured
one, else its own, else none."""

from __future__ import annotations

import pytest

from chatforge.text.chat_template import ChatTemplate, ChatTemplateError
from chatforge.text.named_templates import NAMED_TEMPLATES, chat_template_source, named_template_source, template_for_model

SPECIALS = {
    "chatml": {"eos_token": "<|im_end|>"},
    "qwen": {"eos_token": "<|im_end|>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama2": {"bos_token": "<s>", "eos_token": "</s>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>"},
}
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi! "},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]},
]
EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi! <|im_end|>\n"
              "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi! <|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Name a colour. [/INST]",
    "mistral": "<s>[INST] Be brief.\n\nHi!  [/INST]Hello.</s>[INST] Name a colour. [/INST]",
    "gemma": "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
             "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n",
}


def test_the_named_templates():
    assert NAMED_TEMPLATES == ("chatml", "gemma", "llama2", "llama3", "mistral", "qwen")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_renders_the_published_format(name):
    template = ChatTemplate(named_template_source(name), SPECIALS[name])
    assert template.render(CHAT, add_generation_prompt=True) == EXPECTED[name]


def test_qwen_adds_its_default_system_message():
    rendered = ChatTemplate(named_template_source("qwen")).render([{"role": "user", "content": "Hi"}])
    assert rendered == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_chatml_renders_as_smollm2s_own_template(smol):
    """SmolLM2 ships a ChatML template: with a system message given, both render alike."""
    ours = ChatTemplate(named_template_source("chatml"), smol.special_tokens).render(CHAT[:3] + [{"role": "user", "content": "x"}])
    assert ours == ChatTemplate.for_tokenizer(smol).render(CHAT[:3] + [{"role": "user", "content": "x"}])


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma"])
def test_turns_must_alternate(name):
    template = ChatTemplate(named_template_source(name), SPECIALS[name])
    with pytest.raises(ChatTemplateError, match="must alternate") as info:
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert info.value.kind == "raised"


def test_template_for_model(smol, tmp_path):
    class Base:  # a base model: no template of its own
        special_tokens = {"bos_token": "<bos>"}

        def get_chat_template(self, name=None, *, with_tools=False):
            return None

    assert template_for_model(Base()) is None
    assert template_for_model(Base(), "gemma").render([{"role": "user", "content": "x"}]).startswith("<bos><start_of_turn>user")
    assert template_for_model(smol).source == smol.chat_template  # its own
    assert template_for_model(smol, "llama3").source == named_template_source("llama3")  # configured wins
    file = tmp_path / "mine.jinja"
    file.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert template_for_model(Base(), str(file)).render([{"role": "user", "content": "x"}]) == "[x]"
    assert chat_template_source(str(file)) == file.read_text()
    with pytest.raises(ChatTemplateError, match=r"'vicuna' is neither a named template \(chatml, gemma, .*\) nor a file"):
        template_for_model(Base(), "vicuna")
    file.write_text("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="syntax error"):
        template_for_model(Base(), str(file))
