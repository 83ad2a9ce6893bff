"""`POST /tokenize` and `POST /detokenize` as vLLM's OpenAI-compatible server has them, with
llama.cpp's spelling accepted too (`content`, `add_special`, `with_pieces`; `content` in the
answer of /detokenize), for clients that count tokens before they send a request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatforge.api.openai.schemas import DetokenizeRequest, TokenizeRequest
from chatforge.api.openai.translate import message
from chatforge.service import tokens
from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.service.errors import InvalidRequestError


# Raises unless the caller may use the model: run before any tokenizing, so that a model the
# caller may not use costs nothing.
ModelCheck = Callable[[ServedModel], None]


def tokenize(catalog: ModelCatalog, body: TokenizeRequest, check: ModelCheck) -> dict[str, Any]:
    """The answer: {count, max_model_len, tokens, token_strs}."""
    given = [name for name in ("prompt", "content", "messages") if getattr(body, name) is not None]
    if len(given) != 1:
        raise InvalidRequestError("give exactly one of prompt, content or messages", param=given[-1] if given else "prompt")
    if body.add_special_tokens is not None and body.add_special is not None:
        raise InvalidRequestError("give add_special_tokens or add_special, not both", param="add_special")
    special = body.add_special_tokens if body.add_special_tokens is not None else body.add_special
    if special is None:
        special = body.prompt is not None  # vLLM adds them to a prompt; llama.cpp's default and a chat's are off
    messages = [message(m, i) for i, m in enumerate(body.messages)] if body.messages is not None else None
    check(catalog.get(body.model))
    if messages is not None:
        out = tokens.tokenize_chat(
            catalog, body.model, messages,
            add_generation_prompt=body.add_generation_prompt, add_special_tokens=special,
            chat_template_kwargs=dict(body.chat_template_kwargs or {}),
        )
    else:
        text = body.prompt if body.prompt is not None else body.content
        out = tokens.tokenize_text(catalog, body.model, text, add_special_tokens=special)
    ids: list[Any] = out.token_ids
    if body.with_pieces:
        ids = [{"id": i, "piece": p} for i, p in zip(out.token_ids, out.pieces)]
    answer = {"count": len(out.token_ids), "max_model_len": out.model.context_length, "tokens": ids,
              "token_strs": out.pieces if body.return_token_strs else None}
    return answer


def detokenize(catalog: ModelCatalog, body: DetokenizeRequest, check: ModelCheck) -> dict[str, str]:
    check(catalog.get(body.model))
    _, text = tokens.detokenize(catalog, body.model, list(body.tokens))
    return {"prompt": text, "content": text}
