"""Chat templates for models whose files carry none (base models, many GGUF conversions), and the
one rule for which template a served model uses.

The named templates live in `templates/` (one Jinja file each, rendered by the same sandbox as a
model's own template), each written after its family's published prompt format:

| name    | for                                  | shape of the prompt                                          |
|---------|--------------------------------------|--------------------------------------------------------------|
| chatml  | SmolLM2, Hermes, many fine-tunes     | <|im_start|>role\\n...<|im_end|>\\n                            |
| qwen    | Qwen2 / Qwen2.5 instruct             | ChatML, with Qwen2.5's default system message                |
| llama3  | Llama 3 / 3.1 / 3.2 instruct         | <|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>    |
| llama2  | Llama 2 chat, CodeLlama instruct     | <s>[INST] <<SYS>>...<</SYS>> ... [/INST] answer </s>           |
| mistral | Mistral 7B / Mixtral 8x7B instruct   | <s>[INST] ... [/INST]answer</s>                              |
| gemma   | Gemma 2 / Gemma 3 instruct           | <start_of_turn>user\\n...<end_of_turn>\\n                      |

They render text content only (strings, or lists of text parts); tools need the model's own template.

Which template serves a model (`template_for_model`): the one configured for it (a name above, or
a path to a Jinja file), else the model's own, else none, and a chat request to that model is
refused with a 400 that says how to give it one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatforge.text.chat_template import ChatTemplate
from chatforge.text.errors import ChatTemplateError

_FOLDER = Path(__file__).parent / "templates"
NAMED_TEMPLATES = tuple(sorted(p.stem for p in _FOLDER.glob("*.jinja")))


def named_template_source(name: str) -> str:
    if name not in NAMED_TEMPLATES:
        raise ChatTemplateError(f"no named chat template {name!r} (named: {', '.join(NAMED_TEMPLATES)})", "input")
    return (_FOLDER / f"{name}.jinja").read_text(encoding="utf-8")


def chat_template_source(name_or_file: str) -> str:
    """The source of a named template, or of a Jinja file (a path)."""
    if name_or_file in NAMED_TEMPLATES:
        return named_template_source(name_or_file)
    path = Path(name_or_file).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read the chat template {path}: {exc}", "input") from None
    raise ChatTemplateError(
        f"chat template {name_or_file!r} is neither a named template ({', '.join(NAMED_TEMPLATES)}) nor a file", "input"
    )


def template_for_model(tokenizer: Any, configured: str | None = None) -> ChatTemplate | None:
    """The template a served model uses (see the module docstring), compiled; None when it has none.
    A configured template that cannot be read or compiled is a `ChatTemplateError`."""
    if configured is not None:
        return ChatTemplate(chat_template_source(configured), tokenizer.special_tokens)
    return ChatTemplate.for_tokenizer(tokenizer)
