"""`POST /tokenize` and `POST /detokenize` on the live server, in vLLM's shape and llama.cpp's:
the ids are the model's own, a conversation counts exactly the tokens a chat request sends, and
ids come back as the text they stand for. (Keys: tests/api/test_platform_routes.py.)"""

from __future__ import annotations

import pytest

TEXT = "The capital of France is Paris. Ünïcödé too."
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizer(catalog):
    return catalog.models[0].tokenizer


def test_a_prompt_in_vllms_shape(http, tokenizer):
    r = http.post("/tokenize", json={"model": "smollm2", "prompt": TEXT, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = tokenizer.encode(TEXT, add_special_tokens=True)
    assert body == {"count": len(ids), "max_model_len": 8192, "tokens": ids,
                    "token_strs": [tokenizer.token_bytes(i).decode("utf-8", errors="replace") for i in ids]}
    assert http.post("/tokenize", json={"prompt": TEXT}).json()["token_strs"] is None  # the default model, no strings


def test_a_conversation_counts_what_a_chat_request_sends(http):
    counted = http.post("/tokenize", json={"model": "smollm2", "messages": MESSAGES}).json()["count"]
    chat = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": MESSAGES, "max_tokens": 1}).json()
    assert counted == chat["usage"]["prompt_tokens"]
    without = http.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()["count"]
    assert without < counted  # the assistant's turn opener is left out


def test_llama_cpps_shape(http, tokenizer):
    ascii_text = "The capital of France is Paris."
    body = http.post("/tokenize", json={"content": ascii_text, "with_pieces": True}).json()
    ids = tokenizer.encode(ascii_text)
    assert [t["id"] for t in body["tokens"]] == ids and body["count"] == len(ids)
    assert "".join(t["piece"] for t in body["tokens"]) == ascii_text
    assert http.post("/tokenize", json={"content": TEXT}).json()["tokens"] == tokenizer.encode(TEXT)


def test_detokenize_gives_back_the_text(http, tokenizer):
    ids = tokenizer.encode(TEXT)
    assert http.post("/detokenize", json={"model": "smollm2", "tokens": ids}).json() == {"prompt": TEXT, "content": TEXT}
    special = http.post("/detokenize", json={"tokens": [1, 2]}).json()["prompt"]
    assert special == "<|im_start|><|im_end|>"  # special tokens are text too here


@pytest.mark.parametrize("path, body, param, status", [
    ("/tokenize", {"prompt": "a", "content": "b"}, "content", 400),
    ("/tokenize", {"model": "smollm2"}, "prompt", 400),
    ("/tokenize", {"prompt": "a", "add_special_tokens": True, "add_special": False}, "add_special", 400),
    ("/tokenize", {"prompt": 5}, "prompt", 400),
    ("/tokenize", {"prompt": "a", "model": "gpt-5"}, "model", 404),
    ("/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", 400),
    ("/detokenize", {"tokens": [10**7]}, "tokens", 400),
    ("/detokenize", {"tokens": [-1]}, "tokens[0]", 400),
    ("/detokenize", {"tokens": "abc"}, "tokens", 400),
])
def test_bad_requests_are_400_in_openais_envelope(http, path, body, param, status):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] in ("invalid_request_error", "not_found_error")
