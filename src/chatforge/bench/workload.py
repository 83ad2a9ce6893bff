"""The requests a benchmark sends: synthetic prompts of a target length, or prompts from a JSONL
file, and the cold/warm pairs of the shared-prefix (prefix-cache) scenario.

Synthetic lengths are counted in words, not tokens: the words below are common lowercase English
words, each a single token (with its leading space) in the byte-level BPE vocabularies of the
Llama, SmolLM2, Qwen2 and Mistral families, so N words are close to N tokens. The server's chat
template adds its own tokens around every message; the prompt tokens the server reports in its
usage are the true count.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from chatforge.bench.errors import BenchError

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there one all we their can has more when will would if so what up out about who them some "
    "time than into could only other new these two may first then do any like my now over such our man me even "
    "most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three"
).split()


@dataclass(frozen=True)
class RequestSpec:
    """One chat request of a workload: OpenAI-style messages and the output length asked for."""

    messages: tuple[dict, ...]
    max_tokens: int


def random_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def synthetic(n: int, prompt_tokens: int, output_tokens: int, seed: int = 0) -> list[RequestSpec]:
    """`n` single-turn requests of about `prompt_tokens` random words each."""
    _check_lengths(prompt_tokens, output_tokens)
    rng = random.Random(seed)
    return [
        RequestSpec(({"role": "user", "content": random_words(rng, prompt_tokens)},), output_tokens)
        for _ in range(n)
    ]


def prefix_pairs(
    n_pairs: int, prefix_tokens: int, prompt_tokens: int, output_tokens: int, seed: int = 0
) -> list[tuple[RequestSpec, RequestSpec]]:
    """(cold, warm) pairs: both requests of a pair share a system prompt of `prefix_tokens` words
    that no other pair uses, and differ in their user turn. Sent in order, the first request of
    a pair meets a cold prefix cache and the second a warm one."""
    if prefix_tokens < 1:
        raise BenchError("the shared prefix needs at least one token")
    _check_lengths(prompt_tokens, output_tokens)
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_pairs):
        system = {"role": "system", "content": random_words(rng, prefix_tokens)}
        cold, warm = (
            RequestSpec((system, {"role": "user", "content": random_words(rng, prompt_tokens)}), output_tokens)
            for _ in range(2)
        )
        pairs.append((cold, warm))
    return pairs


def from_jsonl(path: Path, n: int, output_tokens: int) -> list[RequestSpec]:
    """`n` requests from a JSONL file, cycling through it if it is shorter. Each line is an object
    with either `prompt` (a string, sent as one user turn) or `messages` (OpenAI chat messages),
    and optionally `max_tokens` (default: `output_tokens`)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise BenchError(f"cannot read the workload file {path}: {e.strerror}") from e
    if not lines:
        raise BenchError(f"the workload file {path} has no requests")
    specs = [_parse_line(path, i + 1, line, output_tokens) for i, line in enumerate(lines)]
    return [specs[i % len(specs)] for i in range(n)]


def _parse_line(path: Path, lineno: int, line: str, output_tokens: int) -> RequestSpec:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BenchError(f"{where}: not JSON ({e.msg})") from e
    if not isinstance(obj, dict):
        raise BenchError(f"{where}: expected an object with `prompt` or `messages`")
    if isinstance(obj.get("prompt"), str):
        messages = ({"role": "user", "content": obj["prompt"]},)
    elif isinstance(obj.get("messages"), list) and obj["messages"] and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in obj["messages"]
    ):
        messages = tuple(obj["messages"])
    else:
        raise BenchError(f"{where}: expected `prompt` (a string) or `messages` (a list of {{role, content}})")
    max_tokens = obj.get("max_tokens", output_tokens)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BenchError(f"{where}: `max_tokens` must be a positive integer")
    return RequestSpec(messages, max_tokens)


def _check_lengths(prompt_tokens: int, output_tokens: int) -> None:
    if prompt_tokens < 1:
        raise BenchError("prompts need at least one token")
    if output_tokens < 1:
        raise BenchError("outputs need at least one token")
