"""Synthetic prompts have the asked token length (checked with the bundled model's tokenizer);
JSONL workloads parse or fail with a clear error."""

from __future__ import annotations

import json

import pytest

from chatforge.bench.errors import BenchError
from chatforge.bench.workload import RequestSpec, from_jsonl, prefix_pairs, synthetic


@pytest.fixture(scope="module")
def tokenizer():
    from chatforge.models.source import resolve_model
    from chatforge.text.tokenizer import load_tokenizer

    return load_tokenizer(resolve_model(None))


@pytest.mark.parametrize("length", [1, 32, 1000])
def test_synthetic_prompts_have_the_target_token_length(tokenizer, length):
    specs = synthetic(3, length, 64, seed=length)
    for spec in specs:
        (message,) = spec.messages
        assert message["role"] == "user" and spec.max_tokens == 64
        assert len(tokenizer.encode(message["content"])) == length
    assert len({s.messages[0]["content"] for s in specs}) == 3


def test_synthetic_is_deterministic_per_seed():
    assert synthetic(4, 16, 8, seed=5) == synthetic(4, 16, 8, seed=5)
    assert synthetic(4, 16, 8, seed=5) != synthetic(4, 16, 8, seed=6)


def test_prefix_pairs_share_a_system_prompt_within_a_pair_only(tokenizer):
    pairs = prefix_pairs(3, 1000, 20, 16, seed=1)
    systems = []
    for cold, warm in pairs:
        assert cold.messages[0] == warm.messages[0] and cold.messages[0]["role"] == "system"
        assert cold.messages[1] != warm.messages[1]
        assert len(tokenizer.encode(cold.messages[0]["content"])) == 1000
        systems.append(cold.messages[0]["content"])
    assert len(set(systems)) == 3


def test_jsonl_prompts_messages_and_cycling(tmp_path):
    path = tmp_path / "w.jsonl"
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    path.write_text(json.dumps({"prompt": "hello"}) + "\n\n" + json.dumps({"messages": msgs, "max_tokens": 7}) + "\n")
    specs = from_jsonl(path, 3, output_tokens=50)
    assert specs == [
        RequestSpec(({"role": "user", "content": "hello"},), 50),
        RequestSpec(tuple(msgs), 7),
        RequestSpec(({"role": "user", "content": "hello"},), 50),
    ]


@pytest.mark.parametrize("line, message", [
    ("not json", "w.jsonl:1: not JSON"),
    ("[1, 2]", "expected an object"),
    ('{"text": "x"}', "expected `prompt`"),
    ('{"messages": [{"role": "user"}]}', "expected `prompt`"),
    ('{"prompt": "x", "max_tokens": 0}', "`max_tokens` must be a positive integer"),
])
def test_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "w.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(BenchError, match=message.replace("[", r"\[")):
        from_jsonl(path, 1, 10)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(BenchError, match="cannot read"):
        from_jsonl(tmp_path / "nope.jsonl", 1, 10)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BenchError, match="no requests"):
        from_jsonl(tmp_path / "empty.jsonl", 1, 10)


def test_lengths_must_be_positive():
    with pytest.raises(BenchError):
        synthetic(1, 0, 10)
    with pytest.raises(BenchError):
        prefix_pairs(1, 0, 10, 10)
