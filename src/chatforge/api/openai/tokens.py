"""`POST /tokenize` and `POST /detokenize` as vLLM's OpenAI-compatible server has them, with
llama.cpp's spelling accepted too (`content`, `add_special`, `with_pieces`; `content` in the
answer of /detokenize), for clients that count tokens before they send a request."""

from __future__ import annotations

from typing import Any

from chatforge.api.openai.schemas import DetokenizeRequest, TokenizeRequest
from chatforge.api.openai.translate import message
from chatforge.service import tokens
from chatforge.service.catalog import ModelCatalog
from chatforge.service.errors import InvalidRequestError


def tokenize(catalog: ModelCatalog, body: TokenizeRequest) -> tuple[tokens.Tokenized, dict[str, Any]]:
    """The tokens, and the answer: {count, max_model_len, tokens, token_strs}."""
    given = [name for name in ("prompt", "content", "messages") if getattr(body, name) is not None]
    if len(given) != 1:
        raise InvalidRequestError("give exactly one of prompt, content or messages", param=given[-1] if given else "prompt")
    if body.add_special_tokens is not None and body.add_special is not None:
        raise InvalidRequestError("give add_special_tokens or add_special, not both", param="add_special")
    special = body.add_special_tokens if body.add_special_tokens is not None else body.add_special
    if special is None:
        special = body.prompt is not None  # vLLM adds them to a prompt; llama.cpp's default and a chat's are off
    if body.messages is not None:
        out = tokens.tokenize_chat(
            catalog, body.model, [message(m, i) for i, m in enumerate(body.messages)],
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
    return out, answer


def detokenize(catalog: ModelCatalog, body: DetokenizeRequest) -> tuple[Any, dict[str, str]]:
    model, text = tokens.detokenize(catalog, body.model, list(body.tokens))
    return model, {"prompt": text, "content": text}
