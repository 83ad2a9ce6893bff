"""Both limiters against the same contract, exactness under concurrency, and Retry-After."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from chatforge.platform.errors import RateLimitedError, RateLimiterUnavailableError
from chatforge.platform.rate_limit import Limit, format_duration
from chatforge.platform.rate_limit_local import LocalRateLimiter
from chatforge.platform.rate_limit_redis import RedisRateLimiter


@pytest.fixture(params=["local", "redis"])
async def limiter(request):
    if request.param == "local":
        yield LocalRateLimiter()
        return
    limiter = RedisRateLimiter.from_url(request.getfixturevalue("redis_url"), f"test:{uuid.uuid4().hex}")
    yield limiter
    await limiter.close()


async def _outcomes(limiter, limits, tokens, n):
    async def one():
        try:
            return await limiter.admit(limits, tokens)
        except RateLimitedError as exc:
            return exc

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_20_concurrent_against_rpm_5_admit_exactly_5(limiter):
    outcomes = await _outcomes(limiter, [Limit("key", "1", 5, None)], 10, 20)
    admitted = [o for o in outcomes if not isinstance(o, RateLimitedError)]
    refused = [o for o in outcomes if isinstance(o, RateLimitedError)]
    assert (len(admitted), len(refused)) == (5, 15)
    assert sorted(a.headers["x-ratelimit-remaining-requests"] for a in admitted) == ["0", "1", "2", "3", "4"]
    for error in refused:
        assert error.status == 429
        # the oldest of the 5 leaves the window 60 s after it came in: a few ms ago
        assert 59 < error.retry_after <= 60
        reset = error.headers.pop("x-ratelimit-reset-requests")  # until the newest of the 5 leaves
        assert re.fullmatch(r"1m0s|59\.\d+s", reset)
        assert error.headers == {
            "Retry-After": "60",
            "x-ratelimit-limit-requests": "5",
            "x-ratelimit-remaining-requests": "0",
        }
        assert error.message == (
            "Rate limit reached for requests per minute (RPM) on this API key: limit 5. Please retry after 60 s."
        )


async def test_tpm_reserves_prompt_plus_max_tokens_under_concurrency(limiter):
    outcomes = await _outcomes(limiter, [Limit("key", "1", None, 100)], 30, 20)
    admitted = [o for o in outcomes if not isinstance(o, RateLimitedError)]
    assert len(admitted) == 3
    assert sorted(a.headers["x-ratelimit-remaining-tokens"] for a in admitted) == ["10", "40", "70"]
    refused = [o for o in outcomes if isinstance(o, RateLimitedError)]
    assert {e.headers["Retry-After"] for e in refused} == {"60"}
    assert "tokens per minute (TPM) on this API key: limit 100" in refused[0].message


async def test_settling_returns_the_unused_reservation(limiter):
    limits = [Limit("key", "1", None, 100)]
    first = await limiter.admit(limits, 100)  # prompt 10 + max_tokens 90
    with pytest.raises(RateLimitedError):
        await limiter.admit(limits, 10)
    await first.settle(20)
    second = await limiter.admit(limits, 30)
    assert second.headers["x-ratelimit-remaining-tokens"] == "50"
    with pytest.raises(RateLimitedError):
        await limiter.admit(limits, 60)
    await first.settle(100)  # a second settle is ignored
    assert (await limiter.admit(limits, 50)).headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_request_larger_than_the_tpm_waits_for_a_whole_minute_and_pays_in_full(limiter):
    limits = [Limit("key", "1", None, 100)]
    big = await limiter.admit(limits, 500)
    assert big.headers["x-ratelimit-remaining-tokens"] == "0"
    await big.settle(300)  # more than the limit: the window is in debt
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit(limits, 1)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_all_scopes_admit_or_none_does(limiter):
    key, product = Limit("key", "1", 10, None), Limit("product", "7", 2, None)
    outcomes = await _outcomes(limiter, [key, product], 1, 5)
    assert sum(not isinstance(o, RateLimitedError) for o in outcomes) == 2
    refused = next(o for o in outcomes if isinstance(o, RateLimitedError))
    assert "on this product: limit 2" in refused.message
    # the 3 refusals left nothing in the key's window: 8 more fit under its RPM of 10
    outcomes = await _outcomes(limiter, [key], 1, 9)
    assert sum(not isinstance(o, RateLimitedError) for o in outcomes) == 8


async def test_headers_report_the_tightest_scope(limiter):
    key, product = Limit("key", "1", 5, 1000), Limit("product", "7", 50, 300)
    admission = await limiter.admit([key, product], 100)
    assert admission.reserved_tokens == 100
    assert admission.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "300",
        "x-ratelimit-remaining-tokens": "200",
        "x-ratelimit-reset-tokens": "1m0s",
    }


async def test_scopes_are_independent_and_unlimited_scopes_are_free(limiter):
    for n in ("1", "2"):
        await limiter.admit([Limit("key", n, 1, None)], 1)
    with pytest.raises(RateLimitedError):
        await limiter.admit([Limit("key", "1", 1, None)], 1)
    free = await limiter.admit([Limit("key", "3", None, None)], 10**9)
    assert free.headers == {}
    await free.settle(5)


async def test_redis_retry_after_follows_the_entries_leaving_the_window(redis_url):
    limiter = RedisRateLimiter.from_url(redis_url, f"test:{uuid.uuid4().hex}")
    limits = [Limit("key", "1", None, 100)]
    start = time.monotonic()
    await limiter.admit(limits, 40)
    await asyncio.sleep(1.0)
    await limiter.admit(limits, 40)
    with pytest.raises(RateLimitedError) as half:
        await limiter.admit(limits, 50)  # the first 40 must leave: 60 s after `start`
    with pytest.raises(RateLimitedError) as both:
        await limiter.admit(limits, 70)  # both must leave: 60 s after the second
    elapsed = time.monotonic() - start
    await limiter.close()
    assert 60 - elapsed - 0.05 <= half.value.retry_after <= 60 - elapsed + 0.3
    assert both.value.retry_after - half.value.retry_after == pytest.approx(1.0, abs=0.2)


async def test_redis_drops_what_left_the_window(redis_url):
    """Seeds entries older than the window (more than one Lua chunk of them) beside a recent
    one, straight into the limiter's keys, and lets the next admission clear them."""
    from redis.asyncio import Redis

    namespace = f"test:{uuid.uuid4().hex}"
    base = f"{namespace}:key:1"
    client = Redis.from_url(redis_url)
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    old = {f"old{i}": now_ms - 61_000 - i for i in range(1200)}
    await client.zadd(f"{base}:at", old | {"recent": now_ms - 1000})
    await client.hset(f"{base}:tok", mapping={name: 5 for name in old} | {"recent": 7})
    await client.set(f"{base}:sum", 5 * len(old) + 7)

    limiter = RedisRateLimiter(client, namespace)
    admission = await limiter.admit([Limit("key", "1", 2, 100)], 30)
    assert admission.headers["x-ratelimit-remaining-requests"] == "0"
    assert admission.headers["x-ratelimit-remaining-tokens"] == str(100 - 7 - 30)
    assert await client.zcard(f"{base}:at") == 2
    assert await client.hlen(f"{base}:tok") == 2
    assert int(await client.get(f"{base}:sum")) == 37
    assert 60_000 < await client.pttl(f"{base}:sum") <= 61_000
    await limiter.close()


@pytest.mark.parametrize(("rpm", "tpm", "tokens"), [(5, 0, 1), (0, 100, 20)], ids=["rpm", "tpm"])
def test_two_processes_sharing_redis_admit_exactly_5_of_20(redis_url, rpm, tpm, tokens):
    import redis

    namespace = f"test:{uuid.uuid4().hex}"
    worker = Path(__file__).with_name("rate_limit_worker.py")
    processes = [
        subprocess.Popen([sys.executable, str(worker), redis_url, namespace, "10", str(rpm), str(tpm), str(tokens)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{namespace}:go", "go", "go")  # both processes fire at once
    client.close()
    results = [json.loads(process.communicate(timeout=60)[0].strip().splitlines()[-1]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sum(r["admitted"] for r in results) == 5
    assert sorted(ra for r in results for ra in r["retry_after"]) == ["60"] * 15


async def test_redis_outage_refuses_with_503_and_settling_never_raises(unreachable_redis_url):
    gone = RedisRateLimiter.from_url(unreachable_redis_url)
    limits = (Limit("key", "1", 5, None),)
    with pytest.raises(RateLimiterUnavailableError) as refused:
        await gone.admit(limits, 1)
    assert (refused.value.status, refused.value.message) == (503, "The rate limiter is unavailable (ConnectionError).")
    await gone.settle("an-entry-admitted-before-the-outage", limits, 3)
    await gone.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_local_retry_after_is_exact():
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    rpm = [Limit("key", "1", 2, None)]
    await limiter.admit(rpm, 1)
    clock.now += 10
    await limiter.admit(rpm, 1)
    clock.now += 10
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit(rpm, 1)
    assert refused.value.retry_after == 40.0
    assert refused.value.headers["Retry-After"] == "40"
    assert refused.value.headers["x-ratelimit-reset-requests"] == "50s"  # the newest leaves at +60
    clock.now += 40  # the first entry is exactly 60 s old: gone
    admitted = await limiter.admit(rpm, 1)
    assert admitted.headers["x-ratelimit-remaining-requests"] == "0"

    tpm = [Limit("key", "2", None, 100)]
    await limiter.admit(tpm, 40)  # t = 0
    clock.now += 10
    await limiter.admit(tpm, 40)  # t = 10
    clock.now += 10
    for tokens, wait in ((50, 40.0), (70, 50.0), (20, 0)):
        if wait:
            with pytest.raises(RateLimitedError) as refused:
                await limiter.admit(tpm, tokens)
            assert refused.value.retry_after == wait
        else:
            assert (await limiter.admit(tpm, tokens)).headers["x-ratelimit-remaining-tokens"] == "0"


async def test_local_retry_after_is_the_longest_wait_over_scopes():
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    key, product = Limit("key", "1", 1, None), Limit("product", "1", 1, None)
    await limiter.admit([product], 1)
    clock.now += 30
    await limiter.admit([key], 1)
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit([key, product], 1)
    assert refused.value.retry_after == 60.0
    assert "on this API key" in refused.value.message


async def test_local_settle_after_the_window_changes_nothing():
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    limits = [Limit("key", "1", None, 100)]
    old = await limiter.admit(limits, 10)
    clock.now += 61
    await limiter.admit(limits, 90)
    await old.settle(1000)
    assert (await limiter.admit(limits, 10)).headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (1, "1s"), (12.5, "12.5s"), (59.9999, "1m0s"), (60, "1m0s"), (75.25, "1m15.25s")]
)
def test_durations_are_written_as_openai_does(seconds, text):
    assert format_duration(seconds) == text
