"""Token counting for clients (`POST /tokenize`, `POST /detokenize`): a text, or a conversation
rendered with the model's chat template exactly as a chat request would be, turned into the
model's token ids, and ids back into text. No engine is involved."""

from __future__ import annotations

from dataclasses import dataclass

from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.service.errors import InvalidRequestError
from chatforge.service.prepare import chat_template, encode_text, render
from chatforge.service.protocol import ChatMessage, ChatRequest
from chatforge.text.errors import TokenizerError


@dataclass(frozen=True)
class Tokenized:
    model: ServedModel
    token_ids: list[int]
    pieces: list[str]  # each token's text (a partial UTF-8 sequence shown with replacement)


def tokenize_text(catalog: ModelCatalog, model: str | None, text: str, add_special_tokens: bool) -> Tokenized:
    served = catalog.get(model)
    return _tokenized(served, encode_text(served.tokenizer, text, "prompt", add_special_tokens))


def tokenize_chat(catalog: ModelCatalog, model: str | None, messages: list[ChatMessage], *,
                  add_generation_prompt: bool, add_special_tokens: bool, chat_template_kwargs: dict) -> Tokenized:
    """The ids a chat request with these messages would send to the engine (before any check
    of the context: the caller compares the count with the model's maximum itself)."""
    served = catalog.get(model)
    req = ChatRequest("tokenize", model, messages, add_generation_prompt=add_generation_prompt,
                      chat_template_kwargs=chat_template_kwargs)
    text, _ = render(served, chat_template(served, req), messages, req)
    return _tokenized(served, encode_text(served.tokenizer, text, "messages", add_special_tokens))


def detokenize(catalog: ModelCatalog, model: str | None, token_ids: list[int]) -> tuple[ServedModel, str]:
    served = catalog.get(model)
    try:
        return served, served.tokenizer.decode(token_ids, skip_special_tokens=False)
    except TokenizerError as e:
        raise InvalidRequestError(str(e), param="tokens") from None


def _tokenized(served: ServedModel, ids: list[int]) -> Tokenized:
    pieces = [served.tokenizer.token_bytes(i).decode("utf-8", errors="replace") for i in ids]
    return Tokenized(served, ids, pieces)
