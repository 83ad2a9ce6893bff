"""The Redis rate limiter: several gateway processes share every scope's budget.

The same sliding window as the in-process limiter (rate_limit.py), kept in three Redis keys per
scope and decided by one Lua script, which Redis runs atomically: check every scope, then admit
into all or none. Time is the Redis server's clock, so gateways with drifting clocks still agree.
Keys expire a second after their newest entry leaves the window. Without Redis, admission
fails with a 503 (RateLimiterUnavailableError) rather than letting requests run unlimited.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chatforge.platform.errors import RateLimiterUnavailableError
from chatforge.platform.rate_limit import WINDOW_S, Decision, Limit, RateLimiter, ScopeState

# KEYS, 3 per scope: <scope>:at (zset: entry id -> admitted at, ms), <scope>:tok (hash: entry id
# -> tokens), <scope>:sum (the hash's total).  ARGV: window ms, entry id, then per scope: rpm and
# tpm (0: no limit) and the tokens to reserve.
# Returns: admitted (0/1), retry ms, blocked scope (1-based, 0: none), blocked dimension
# (1 requests, 2 tokens), then per scope: requests, tokens, ms until the window is empty.
_DECIDE = """
local window = tonumber(ARGV[1])
local id = ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local n = #KEYS / 3
local counts, sums = {}, {}
local retry, blocked, dim = 0, 0, 0

for s = 1, n do
  local at, tok, sum = KEYS[3*s-2], KEYS[3*s-1], KEYS[3*s]
  local old = redis.call('ZRANGEBYSCORE', at, '-inf', now - window)
  if #old > 0 then
    local freed = 0
    -- in chunks: unpack() of a long list overflows Lua's stack
    for i = 1, #old, 500 do
      local chunk = {unpack(old, i, math.min(i + 499, #old))}
      for _, v in ipairs(redis.call('HMGET', tok, unpack(chunk))) do freed = freed + (tonumber(v) or 0) end
      redis.call('HDEL', tok, unpack(chunk))
    end
    redis.call('ZREMRANGEBYSCORE', at, '-inf', now - window)
    redis.call('DECRBY', sum, freed)
  end
  local rpm, tpm, cost = tonumber(ARGV[3*s]), tonumber(ARGV[3*s+1]), tonumber(ARGV[3*s+2])
  local count = redis.call('ZCARD', at)
  local used = tonumber(redis.call('GET', sum) or '0')
  counts[s], sums[s] = count, used
  if rpm > 0 and count + 1 > rpm then
    -- the (count + 1 - rpm)-th oldest entry must leave first
    local e = redis.call('ZRANGE', at, count - rpm, count - rpm, 'WITHSCORES')
    local wait = tonumber(e[2]) + window - now
    if blocked == 0 or wait > retry then retry, blocked, dim = wait, s, 1 end
  end
  if tpm > 0 and used + cost > tpm then
    local need, freed, wait = used + cost - tpm, 0, window
    local entries = redis.call('ZRANGE', at, 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', tok, entries[i]) or '0')
      if freed >= need then wait = tonumber(entries[i+1]) + window - now; break end
    end
    if blocked == 0 or wait > retry then retry, blocked, dim = wait, s, 2 end
  end
end

if blocked == 0 then
  for s = 1, n do
    local at, tok, sum = KEYS[3*s-2], KEYS[3*s-1], KEYS[3*s]
    local cost = tonumber(ARGV[3*s+2])
    redis.call('ZADD', at, now, id)
    redis.call('HSET', tok, id, cost)
    redis.call('INCRBY', sum, cost)
    for _, k in ipairs({at, tok, sum}) do redis.call('PEXPIRE', k, window + 1000) end
    counts[s], sums[s] = counts[s] + 1, sums[s] + cost
  end
end

local out = {blocked == 0 and 1 or 0, retry, blocked, dim}
for s = 1, n do
  local newest = redis.call('ZRANGE', KEYS[3*s-2], -1, -1, 'WITHSCORES')
  local reset = 0
  if #newest > 0 then reset = tonumber(newest[2]) + window - now end
  table.insert(out, counts[s]); table.insert(out, sums[s]); table.insert(out, reset)
end
return out
"""

# KEYS, 2 per scope: <scope>:tok, <scope>:sum.  ARGV: entry id, tokens.
_SETTLE = """
for i = 1, #KEYS, 2 do
  local old = redis.call('HGET', KEYS[i], ARGV[1])
  if old then
    redis.call('HSET', KEYS[i], ARGV[1], ARGV[2])
    redis.call('INCRBY', KEYS[i + 1], tonumber(ARGV[2]) - tonumber(old))
  end
end
return 0
"""

_DIMENSIONS = {1: "requests", 2: "tokens"}
_TIMEOUT_S = 2.0  # to connect, and for one reply

log = logging.getLogger(__name__)


class RedisRateLimiter(RateLimiter):
    def __init__(self, client: Redis, namespace: str = "chatforge:rl") -> None:
        self._redis = client
        self._namespace = namespace
        self._decide = client.register_script(_DECIDE)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def from_url(cls, url: str, namespace: str = "chatforge:rl") -> RedisRateLimiter:
        # Bounded waits: a Redis that hangs must fail admissions, not hold them.
        return cls(Redis.from_url(url, socket_connect_timeout=_TIMEOUT_S, socket_timeout=_TIMEOUT_S), namespace)

    async def ping(self) -> None:
        """Check the connection (at start-up, so a wrong URL fails there and not per request)."""
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise RateLimiterUnavailableError(f"Cannot reach Redis ({type(exc).__name__}).") from exc

    async def decide(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> Decision:
        keys, args = [], [round(WINDOW_S * 1000), entry]
        for limit in limits:
            base = f"{self._namespace}:{limit.scope}"
            keys += [f"{base}:at", f"{base}:tok", f"{base}:sum"]
            args += [limit.rpm or 0, limit.tpm or 0, limit.cost(tokens)]
        try:
            out = [int(v) for v in await self._decide(keys=keys, args=args)]
        except RedisError as exc:
            raise RateLimiterUnavailableError(f"The rate limiter is unavailable ({type(exc).__name__}).") from exc
        admitted, retry_ms, blocked, dimension = out[:4]
        states = tuple(
            ScopeState(limit, out[4 + 3 * i], out[5 + 3 * i], out[6 + 3 * i] / 1000)
            for i, limit in enumerate(limits)
        )
        where = None if admitted else (blocked - 1, _DIMENSIONS[dimension])
        return Decision(bool(admitted), retry_ms / 1000 if not admitted else 0.0, states, where)

    async def settle(self, entry: str, limits: tuple[Limit, ...], tokens: int) -> None:
        keys = []
        for limit in limits:
            base = f"{self._namespace}:{limit.scope}"
            keys += [f"{base}:tok", f"{base}:sum"]
        try:
            await self._settle(keys=keys, args=[entry, tokens])
        except RedisError as exc:
            # Settling runs as a request ends, often in a `finally`: never raise there. The
            # reservation then simply stays as reserved until it leaves the window.
            log.warning("could not settle a rate-limit reservation: %s", type(exc).__name__)

    async def close(self) -> None:
        await self._redis.aclose()
