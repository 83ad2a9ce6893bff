"""Rate limits: requests and tokens per minute, per scope (an API key, a product).

The rule is a sliding window: a scope admits a request when, counting every request it admitted
in the last 60 s, the requests stay within its RPM and their tokens within its TPM. Tokens are
reserved at admission (prompt + max_tokens, capped at the TPM so that a large request waits for
a whole minute's budget instead of never running) and settled later with the real count, which
may exceed the reservation. A reservation that is never settled simply leaves the window.

A request spanning several scopes is admitted by all of them or by none, atomically: the
in-process limiter holds a lock, the Redis one runs one Lua script (rate_limit_redis.py).
This module holds what both share: the interface, the admission and the HTTP headers.
"""

from __future__ import annotations

import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from chatforge.platform.errors import RateLimitedError

WINDOW_S = 60.0


@dataclass(frozen=True)
class Limit:
    """One scope's budget. Requests naming the same scope share it, across processes too."""

    kind: str  # "key" or "product"
    id: str
    rpm: int | None  # None: requests are not limited in this scope
    tpm: int | None

    @property
    def scope(self) -> str:
        return f"{self.kind}:{self.id}"

    def cost(self, tokens: int) -> int:
        """The tokens reserved in this scope for a request that may use `tokens`."""
        return min(tokens, self.tpm) if self.tpm is not None else tokens


@dataclass(frozen=True)
class ScopeState:
    """A scope's window right after a decision."""

    limit: Limit
    requests: int  # admitted in the window, this request included when it was admitted
    tokens: int  # their reserved or settled tokens
    reset_s: float  # until the window is empty again (0 when it is)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    retry_after_s: float  # until this request would be admitted, if nothing else arrived; 0 if admitted
    states: tuple[ScopeState, ...]  # in the order of the limits given
    blocked: tuple[int, str] | None = None  # (index into states, "requests" | "tokens")


class RateLimiter(ABC):
    """Admits or refuses requests against their scopes' limits."""

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Admission:
        """Admit a request that may use `tokens` in every scope of `limits`, or raise
        RateLimitedError with Retry-After and the x-ratelimit headers."""
        limits = tuple(limit for limit in limits if limit.rpm is not None or limit.tpm is not None)
        if not limits:
            return Admission(self, "", (), 0, {})
        entry = uuid.uuid4().hex
        decision = await self.decide(entry, limits, max(0, tokens))
        headers = ratelimit_headers(decision.states)
        if not decision.admitted:
            raise _refusal(decision, headers)
        return Admission(self, entry, limits, tokens, headers)

    @abstractmethod
    async def decide(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> Decision:
        """Atomically: admit `entry` into every scope (reserving `limit.cost(tokens)` in each)
        or into none."""

    @abstractmethod
    async def settle(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> None:
        """Replace the entry's reserved tokens by `tokens` wherever it is still in the window."""

    async def close(self) -> None:
        """Release connections; the default holds none."""


class Admission:
    """An admitted request: its success headers, and its reservation to settle once."""

    def __init__(self, limiter: RateLimiter, entry: str, limits: tuple[Limit, ...], reserved: int,
                 headers: dict[str, str]) -> None:
        self._limiter = limiter
        self._entry = entry
        self._limits = limits
        self.reserved_tokens = reserved
        self.headers = headers  # x-ratelimit-*, for the response
        self._settled = not limits

    async def settle(self, total_tokens_used: int) -> None:
        """Charge what the request really used (prompt + completion); later calls do nothing."""
        if self._settled:
            return
        self._settled = True
        await self._limiter.settle(self._entry, self._limits, max(0, total_tokens_used))


def ratelimit_headers(states: Sequence[ScopeState]) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens}, from the tightest scope of each
    dimension (fewest remaining; on a tie, the later reset). `reset` is the time until the
    window is empty, i.e. until the whole limit is available again, written as OpenAI does
    ("1m0s", "12.5s", "250ms")."""
    headers: dict[str, str] = {}
    for dimension in ("requests", "tokens"):
        rows = []
        for state in states:
            limit = state.limit.rpm if dimension == "requests" else state.limit.tpm
            if limit is not None:
                used = state.requests if dimension == "requests" else state.tokens
                rows.append((max(0, limit - used), -state.reset_s, limit, state.reset_s))
        if rows:
            remaining, _, limit, reset_s = min(rows)
            headers[f"x-ratelimit-limit-{dimension}"] = str(limit)
            headers[f"x-ratelimit-remaining-{dimension}"] = str(remaining)
            headers[f"x-ratelimit-reset-{dimension}"] = format_duration(reset_s)
    return headers


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


_KIND_WORDS = {"key": "this API key", "product": "this product"}


def _refusal(decision: Decision, headers: dict[str, str]) -> RateLimitedError:
    index, dimension = decision.blocked
    limit = decision.states[index].limit
    value = limit.rpm if dimension == "requests" else limit.tpm
    retry = max(1, math.ceil(decision.retry_after_s))
    unit = "requests per minute (RPM)" if dimension == "requests" else "tokens per minute (TPM)"
    message = (f"Rate limit reached for {unit} on {_KIND_WORDS.get(limit.kind, limit.scope)}: "
               f"limit {value}. Please retry after {retry} s.")
    return RateLimitedError(message, decision.retry_after_s, {"Retry-After": str(retry), **headers})
