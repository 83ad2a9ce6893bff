"""One OS process of the cross-process rate-limit test: connects to Redis, says `ready`, waits
for the test's go signal, fires N concurrent admissions at one scope and prints a JSON summary.

usage: python rate_limit_worker.py REDIS_URL NAMESPACE N RPM TPM TOKENS   (0: no limit)
"""

from __future__ import annotations

import asyncio
import json
import sys

from redis.asyncio import Redis

from chatforge.platform.errors import RateLimitedError
from chatforge.platform.rate_limit import Limit
from chatforge.platform.rate_limit_redis import RedisRateLimiter


async def main(url: str, namespace: str, n: int, rpm: int, tpm: int, tokens: int) -> None:
    limiter = RedisRateLimiter.from_url(url, namespace)
    signals = Redis.from_url(url)
    await limiter.ping()
    print("ready", flush=True)
    await signals.blpop([f"{namespace}:go"], timeout=30)

    async def one() -> str | None:
        try:
            await limiter.admit([Limit("key", "shared", rpm or None, tpm or None)], tokens)
            return None
        except RateLimitedError as exc:
            return exc.headers["Retry-After"]

    outcomes = await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps({"admitted": outcomes.count(None), "retry_after": [o for o in outcomes if o is not None]}))
    await signals.aclose()
    await limiter.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])))
