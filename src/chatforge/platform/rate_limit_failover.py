"""Rate limits while Redis is away, by `storage.redis_unavailable`.

`"refuse"` (the default): a request that some limit applies to is refused with 503
`rate_limiter_unavailable` while Redis cannot be reached, so the budgets shared by every gateway
hold (unlimited requests never ask Redis and run on). `"local"`: such requests are admitted
through this process's own windows instead, each gateway enforcing every limit alone (so N
gateways may admit up to N times a budget) until Redis answers again. Either way recovery needs
no restart: after a failure Redis is left alone for `retry_s` (no request waits on a dead
connection meanwhile), then asked again; each admission settles with the limiter that made it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from chatforge.platform.errors import RateLimiterUnavailableError
from chatforge.platform.rate_limit import Admission, Decision, Limit, RateLimiter
from chatforge.platform.rate_limit_local import LocalRateLimiter
from chatforge.platform.rate_limit_redis import RedisRateLimiter
from chatforge.platform.storage import StoreHealth


class FailoverRateLimiter(RateLimiter):
    def __init__(self, shared: RedisRateLimiter, health: StoreHealth, *, fall_back: bool,
                 retry_s: float = 1.0) -> None:
        self.shared = shared
        self.local = LocalRateLimiter() if fall_back else None
        self.health = health
        self.retry_s = retry_s
        self._retry_at = 0.0  # monotonic time before which Redis is not asked again

    async def admit(self, limits: Sequence[Limit], tokens: int) -> Admission:
        if not any(limit.rpm is not None or limit.tpm is not None for limit in limits):
            return await self.shared.admit(limits, tokens)  # nothing to ask Redis
        if time.monotonic() >= self._retry_at:
            try:
                admission = await self.shared.admit(limits, tokens)
            except RateLimiterUnavailableError as exc:
                self.health.failed(exc.__cause__ or exc)
                self._retry_at = time.monotonic() + self.retry_s
                if self.local is None:
                    raise
            else:
                self.health.answered()
                return admission
        if self.local is None:
            raise RateLimiterUnavailableError("The rate limiter is unavailable.")
        return await self.local.admit(limits, tokens)

    async def decide(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> Decision:
        raise NotImplementedError("admit() picks the limiter; each decides for itself")

    async def settle(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> None:
        raise NotImplementedError("an Admission settles with the limiter that made it")

    async def close(self) -> None:
        await self.shared.close()
