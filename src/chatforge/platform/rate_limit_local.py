"""The in-process rate limiter: one gateway process, every scope's window in memory.

Each scope keeps its admitted entries oldest first with a running token total, so a decision
costs O(entries that left the window) and O(entries) only to compute a refusal's Retry-After.
A threading lock makes decide/settle atomic even if called from several threads; neither ever
awaits while holding it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from chatforge.platform.rate_limit import WINDOW_S, Decision, Limit, RateLimiter, ScopeState


@dataclass
class _Entry:
    id: str
    at: float
    tokens: int


@dataclass
class _Window:
    entries: deque[_Entry] = field(default_factory=deque)  # admission order = time order
    by_id: dict[str, _Entry] = field(default_factory=dict)
    tokens: int = 0  # sum of the entries' tokens

    def drop_older_than(self, horizon: float) -> None:
        while self.entries and self.entries[0].at <= horizon:
            gone = self.entries.popleft()
            del self.by_id[gone.id]
            self.tokens -= gone.tokens

    def wait_for_requests(self, rpm: int, now: float) -> float:
        """Seconds until one more request fits: the (n + 1 - rpm)-th oldest must leave."""
        return self.entries[len(self.entries) - rpm].at + WINDOW_S - now

    def wait_for_tokens(self, need: int, now: float) -> float:
        """Seconds until `need` tokens have left the window."""
        freed = 0
        for entry in self.entries:
            freed += entry.tokens
            if freed >= need:
                return entry.at + WINDOW_S - now
        return WINDOW_S

    def reset_s(self, now: float) -> float:
        return self.entries[-1].at + WINDOW_S - now if self.entries else 0.0


class LocalRateLimiter(RateLimiter):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    async def decide(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> Decision:
        with self._lock:
            now = self._clock()
            windows = [self._window(limit.scope, now) for limit in limits]
            retry, blocked = 0.0, None
            for i, (limit, window) in enumerate(zip(limits, windows)):
                if limit.rpm is not None and len(window.entries) + 1 > limit.rpm:
                    wait = window.wait_for_requests(limit.rpm, now)
                    if blocked is None or wait > retry:
                        retry, blocked = wait, (i, "requests")
                cost = limit.cost(tokens)
                if limit.tpm is not None and window.tokens + cost > limit.tpm:
                    wait = window.wait_for_tokens(window.tokens + cost - limit.tpm, now)
                    if blocked is None or wait > retry:
                        retry, blocked = wait, (i, "tokens")
            if blocked is None:
                for limit, window in zip(limits, windows):
                    added = _Entry(entry, now, limit.cost(tokens))
                    window.entries.append(added)
                    window.by_id[entry] = added
                    window.tokens += added.tokens
            states = tuple(
                ScopeState(limit, len(w.entries), w.tokens, w.reset_s(now)) for limit, w in zip(limits, windows)
            )
            return Decision(blocked is None, retry, states, blocked)

    async def settle(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> None:
        with self._lock:
            for limit in limits:
                window = self._windows.get(limit.scope)
                found = window.by_id.get(entry) if window else None
                if found is not None:
                    window.tokens += tokens - found.tokens
                    found.tokens = tokens

    def _window(self, scope: str, now: float) -> _Window:
        window = self._windows.setdefault(scope, _Window())
        window.drop_older_than(now - WINDOW_S)
        return window
