"""The schema check that every OpenAI-format test runs under (openai_conformance.py): it knows
its source, it refuses what OpenAI's schema refuses, it lets chatforge's documented additions
through, and it really sees what the servers send."""

from __future__ import annotations

import json

from .openai_conformance import RECORDER, SPEC, problems

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "estimated_cost": 1e-6},
}


def test_the_vendored_schemas_name_their_source():
    spec = json.loads(SPEC.read_text())
    assert spec["source"].startswith("https://github.com/openai/openai-openapi/blob/")
    assert spec["commit"] in spec["source"] and spec["openapi_info_version"] == "2.3.0"
    assert set(spec["roots"]) <= set(spec["schemas"])


def test_what_openai_requires_is_required():
    assert problems("CreateChatCompletionResponse", CHAT) == []
    no_refusal = json.loads(json.dumps(CHAT))
    del no_refusal["choices"][0]["message"]["refusal"]
    assert problems("CreateChatCompletionResponse", no_refusal) == [
        "CreateChatCompletionResponse: choices/0/message: 'refusal' is a required property"
    ]
    half_logprobs = json.loads(json.dumps(CHAT))
    half_logprobs["choices"][0]["logprobs"] = {"content": []}
    assert problems("CreateChatCompletionResponse", half_logprobs) == [
        "CreateChatCompletionResponse: choices/0/logprobs: {'content': []} is not valid under any of the given schemas"
    ]
    assert problems("ErrorResponse", {"error": {"message": "m", "type": "t"}}) != []


def test_chatforges_additions_validate():
    # usage.estimated_cost above; a model's context length; a chunk's null finish_reason and usage
    model = {"id": MODEL, "object": "model", "created": 1, "owned_by": "chatforge", "context_length": 8192,
             "max_model_len": 8192}
    assert problems("ListModelsResponse", {"object": "list", "data": [model]}) == []
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "usage": None,
             "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}]}
    assert problems("CreateChatCompletionStreamResponse", chunk) == []


def test_the_servers_send_every_openai_object_through_the_check(http):
    before = RECORDER.checked
    r = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2, "stream": True,
                                                "messages": [{"role": "user", "content": "Hi"}],
                                                "stream_options": {"include_usage": True}})
    frames = [line for line in r.text.splitlines() if line.startswith("data: {")]
    http.get("/v1/models")
    http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "Hi"}]})
    assert RECORDER.checked - before == len(frames) + 2


def test_the_completion_relaxations_are_exactly_the_documented_two():
    choice = {"index": 0, "text": "Paris", "finish_reason": "length",
              "logprobs": {"tokens": ["Paris"], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [0]}}
    obj = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL, "choices": [choice]}
    assert problems("TextCompletion", obj) == [] and problems("TextCompletionChunk", obj) == []
    assert len(problems("CreateCompletionResponse", obj)) == 1  # the published schema: numbers only
    streaming = json.loads(json.dumps(obj))
    streaming["choices"][0]["finish_reason"] = None
    assert problems("TextCompletionChunk", streaming) == []
    assert problems("TextCompletion", streaming) != []  # a whole answer always says why it finished
    wrong = json.loads(json.dumps(obj))
    wrong["choices"][0]["logprobs"]["token_logprobs"] = ["x"]
    wrong["choices"][0]["finish_reason"] = "eos_token"
    assert len(problems("TextCompletionChunk", wrong)) == 2
