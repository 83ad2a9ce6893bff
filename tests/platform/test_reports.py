"""Usage over time (the dashboard's `GET /v1/usage`): rows summed per bucket and group, refusals
apart, latency percentiles of completed requests, scoped to accounts, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from chatforge.platform import accounts, reports
from chatforge.platform.errors import InvalidInputError
from chatforge.platform.gate import Platform
from chatforge.platform.metering import UsageRecord
from chatforge.platform.reports import Latency, UsageRow, Window

PRICES = {"a": (1.0, 2.0), "b": (3.0, 4.0)}  # USD per million input and output tokens
T0 = datetime(2030, 5, 6, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
async def platform(database_url):
    async with Platform(database_url) as started:
        yield started


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def seed(platform) -> tuple[int, int]:
    """Rows around the window 10:00-10:03 UTC; returns alice's and bob's account ids."""
    async with platform.engine.begin() as conn:
        alice = (await accounts.create_account(conn, "alice")).id
        bob = (await accounts.create_account(conn, "bob")).id

    def row(n, when, model, status="completed", latency=1.0, account=alice, tokens=(10, 5)):
        usd_in, usd_out = PRICES[model]  # the service prices each request; the row carries it
        return UsageRecord(request_id=f"r{n}", model=model, dialect="openai", prompt_tokens=tokens[0],
                           completion_tokens=tokens[1], latency_s=latency, status=status, account_id=account,
                           estimated_cost=(tokens[0] * usd_in + tokens[1] * usd_out) / 1e6, created_at=when)

    for record in [
        row(1, at(5), "a", latency=1.0),
        row(2, at(50), "a", latency=3.0),
        row(3, at(70), "b", latency=2.0, account=bob),
        row(4, at(80), "a", status="rate_limited", latency=0.001, tokens=(0, 0)),
        row(5, at(120), "a", status="aborted", latency=9.0, tokens=(10, 1)),
        row(6, at(-1), "a"),  # before the window
        row(7, at(180), "a"),  # at its end: excluded
    ]:
        await platform.record_usage(record)
    await platform.flush_usage()
    return alice, bob


async def test_buckets_groups_refusals_and_percentiles(platform):
    alice, bob = await seed(platform)
    window = Window.of(T0, at(180), "minute")
    async with platform.engine.connect() as conn:
        series = await reports.usage_series(conn, "model", window)
    cost_a = (10 * 1.0 + 5 * 2.0) / 1e6
    assert [(b.start, b.usage) for b in series.buckets] == [
        (at(0), UsageRow("a", 2, 20, 10, pytest.approx(2 * cost_a), 0)),
        (at(60), UsageRow("a", 0, 0, 0, 0.0, 1)),
        (at(60), UsageRow("b", 1, 10, 5, pytest.approx((10 * 3.0 + 5 * 4.0) / 1e6), 0)),
        (at(120), UsageRow("a", 1, 10, 1, pytest.approx((10 * 1.0 + 1 * 2.0) / 1e6), 0)),
    ]
    assert [(r.group, r.requests, r.prompt_tokens, r.completion_tokens, r.rate_limited) for r in series.totals] == [
        ("a", 3, 30, 11, 1), ("b", 1, 10, 5, 0)]
    # completed requests only: the refusal and the abort take no part
    assert series.overall_latency == Latency(3, 2.0, pytest.approx(2.8), pytest.approx(2.98))
    assert series.group_latency == {"a": Latency(2, pytest.approx(2.0), pytest.approx(2.8), pytest.approx(2.98)),
                                    "b": Latency(1, 2.0, 2.0, 2.0)}
    assert series.latency == [(at(0), Latency(2, pytest.approx(2.0), pytest.approx(2.8), pytest.approx(2.98))),
                              (at(60), Latency(1, 2.0, 2.0, 2.0))]

    async with platform.engine.connect() as conn:
        scoped = await reports.usage_series(conn, "account", window, accounts=[bob])
        hourly = await reports.usage_series(conn, "account", Window.of(at(-3600), at(3600), "hour"))
        report = await reports.usage_report(conn, "account", accounts=[alice])
    assert [(b.start, b.usage.group, b.usage.requests) for b in scoped.buckets] == [(at(60), "bob", 1)]
    assert [r.group for r in scoped.totals] == ["bob"] and list(scoped.group_latency) == ["bob"]
    assert scoped.overall_latency == Latency(1, 2.0, 2.0, 2.0)
    async with platform.engine.connect() as conn:
        nothing = await reports.usage_series(conn, "model", Window.of(at(-7200), at(-3600), "minute"))
    assert (nothing.totals, nothing.buckets, nothing.latency, nothing.overall_latency) == ([], [], [], None)
    # 09:59:59 falls in the 09:00 bucket; everything else, 10:03 included, in the 10:00 one
    assert [(b.start, b.usage.group, b.usage.requests, b.usage.rate_limited) for b in hourly.buckets] == [
        (at(-3600), "alice", 1, 0), (T0, "alice", 4, 1), (T0, "bob", 1, 0)]
    assert [(r.group, r.requests, r.rate_limited) for r in report] == [("alice", 5, 1)]


def test_windows_are_checked():
    assert Window.of(T0, at(60), "minute") == Window(T0, at(60), 60)
    default = Window.of(None, None, "hour")
    assert default.until - default.since == timedelta(days=1) and default.bucket_s == 3600
    with pytest.raises(InvalidInputError, match="bucket is one of minute, hour, day"):
        Window.of(T0, at(60), "week")
    with pytest.raises(InvalidInputError, match="needs a timezone"):
        Window.of(datetime(2030, 1, 1), at(60), "minute")
    with pytest.raises(InvalidInputError, match="must come before"):
        Window.of(at(60), T0, "minute")
    with pytest.raises(InvalidInputError, match="more than 1500 minute buckets"):
        Window.of(T0, T0 + timedelta(days=2), "minute")


async def test_a_requests_row_is_found_within_its_accounts(platform):
    alice, bob = await seed(platform)
    async with platform.engine.connect() as conn:
        row = await reports.request_usage(conn, "r3", accounts=[bob])
        assert await reports.request_usage(conn, "r3", accounts=[alice]) is None
        assert await reports.request_usage(conn, "r3") == row
        assert await reports.request_usage(conn, "nope") is None
    assert (row.request_id, row.created_at, row.model, row.status, row.prompt_tokens, row.completion_tokens) == (
        "r3", at(70), "b", "completed", 10, 5)
    assert row.estimated_cost == pytest.approx((10 * 3.0 + 5 * 4.0) / 1e6)
