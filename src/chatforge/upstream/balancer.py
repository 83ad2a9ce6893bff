"""Which upstream takes a request, among those that may (health.py) and can (capabilities.py).

`cache_aware` (the default) keeps a prompt's prefix on one node, where its KV blocks are cached,
unless that node is loaded:

1. The prompt's first `affinity_tokens` (whole 16-token blocks, the engine's cache granularity)
   are hashed with a stable hash; a shorter prompt is hashed whole. Each candidate scores
   `weight / -ln(u)`, u uniform in (0, 1) from hashing that prefix with the candidate's URL, and
   the best score is the favourite: rendezvous (highest random weight) hashing. Every gateway
   computes the same favourite with no shared state, and removing a node moves only its own
   prefixes.
2. The favourite is left when it is loaded by SMG's cache_aware rule, applied to it: its load
   exceeds the least loaded candidate's by more than `balance_abs_threshold` and is more than
   `balance_rel_threshold` times it. Load = this gateway's requests in flight there plus the
   sequences the node reports waiting.
3. Then the pick is the power of two choices: the less loaded of two random candidates.

`least_outstanding` (ties broken at random: LiteLLM #39322 starved a backend by always taking the
first of equals) and `round_robin` are there for tests and comparisons.
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

BLOCK_TOKENS = 16  # the engine's KV block: prefixes are cached in whole blocks
_SCALE = float(1 << 64)


class Candidate(Protocol):
    url: str
    weight: float

    @property
    def load(self) -> int: ...


@dataclass(frozen=True)
class Pick:
    upstream: Candidate
    affinity: bool  # the prompt's favourite was taken


def prefix_key(prompt_ids: Sequence[int], affinity_tokens: int) -> bytes:
    """A stable digest of the prompt's prefix (the same on every gateway and Python run): its
    first `affinity_tokens` in whole blocks, or all of a shorter prompt (hashing only the whole
    blocks of short prompts would send every one to one node: they share the template's opening)."""
    head = prompt_ids if len(prompt_ids) < affinity_tokens else prompt_ids[: affinity_tokens // BLOCK_TOKENS * BLOCK_TOKENS]
    return hashlib.blake2b(array("q", head).tobytes(), digest_size=16).digest()


def rendezvous(candidates: Sequence[Candidate], key: bytes) -> Candidate:
    """The candidate with the highest random weight for `key`."""

    def score(c: Candidate) -> float:
        digest = hashlib.blake2b(key + c.url.encode(), digest_size=8).digest()
        u = (int.from_bytes(digest, "big") + 0.5) / _SCALE  # in (0, 1)
        return c.weight / -math.log(u)

    return max(candidates, key=score)


class Balancer:
    def __init__(self, policy: str = "cache_aware", *, affinity_tokens: int = 64, abs_threshold: int = 8,
                 rel_threshold: float = 1.5, rng: random.Random | None = None):
        self.policy = policy
        self.affinity_tokens = affinity_tokens
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self._rng = rng or random.Random()
        self._turn = 0

    def pick(self, candidates: Sequence[Candidate], prompt_ids: Sequence[int]) -> Pick:
        if not candidates:
            raise ValueError("no candidate to pick from")
        if self.policy == "round_robin":
            self._turn += 1
            return Pick(candidates[self._turn % len(candidates)], False)
        if self.policy == "least_outstanding":
            return Pick(self._least_loaded(candidates), False)
        favourite = rendezvous(candidates, prefix_key(prompt_ids, self.affinity_tokens))
        if not self._loaded(favourite, candidates):
            return Pick(favourite, True)
        return Pick(self._power_of_two(candidates), False)

    def _loaded(self, favourite: Candidate, candidates: Sequence[Candidate]) -> bool:
        least = min(c.load for c in candidates)
        return favourite.load - least > self.abs_threshold and favourite.load > least * self.rel_threshold

    def _least_loaded(self, candidates: Sequence[Candidate]) -> Candidate:
        least = min(c.load for c in candidates)
        return self._rng.choice([c for c in candidates if c.load == least])

    def _power_of_two(self, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        if a.load == b.load:
            return self._rng.choice((a, b))
        return a if a.load < b.load else b
