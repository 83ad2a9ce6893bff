"""service/tokens.py: token counting agrees with what a chat request sends, and refuses what it
cannot do in the service's typed errors (no engine involved)."""

from __future__ import annotations

import dataclasses

import pytest

from chatforge.service import tokens
from chatforge.service.catalog import ModelCatalog
from chatforge.service.chat import ChatService
from chatforge.service.errors import InvalidRequestError
from chatforge.service.protocol import ChatMessage, ChatRequest, SamplingParams

MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]


def test_a_conversation_counts_the_prompt_a_chat_request_sends(make_catalog):
    catalog, _ = make_catalog(lambda ids, params: [])
    counted = tokens.tokenize_chat(catalog, "smollm2", MESSAGES, add_generation_prompt=True,
                                   add_special_tokens=False, chat_template_kwargs={})
    prep = ChatService(catalog).prepare(ChatRequest("r", "smollm2", MESSAGES, SamplingParams(max_tokens=1)))
    assert tuple(counted.token_ids) == prep.prompts[0].token_ids
    assert "".join(counted.pieces) == prep.prompts[0].text


def test_text_round_trip_and_refusals(make_catalog):
    catalog, _ = make_catalog(lambda ids, params: [])
    ids = tokens.tokenize_text(catalog, None, "Hello world", add_special_tokens=True).token_ids
    assert tokens.detokenize(catalog, None, ids)[1] == "Hello world"
    with pytest.raises(InvalidRequestError) as e:
        tokens.detokenize(catalog, None, [10**7])
    assert e.value.param == "tokens"
    catalog = ModelCatalog([dataclasses.replace(catalog.models[0], template=None)])  # a base model
    with pytest.raises(InvalidRequestError, match="has no chat template") as e:
        tokens.tokenize_chat(catalog, None, MESSAGES, add_generation_prompt=True, add_special_tokens=False,
                             chat_template_kwargs={})
    assert e.value.param == "model"
