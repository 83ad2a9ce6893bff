"""Usage rows: written off the request path, for aborted requests too, priced, and summed."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from chatforge.platform import accounts, keys, reports
from chatforge.platform import tables as t
from chatforge.platform.db import create_engine
from chatforge.platform.errors import InvalidInputError
from chatforge.platform.gate import Platform
from chatforge.platform.metering import UsageRecord, UsageStatus
from chatforge.platform.migrations import upgrade
from chatforge.platform.storage import StoreHealth
from chatforge.platform.usage_buffer import UsageBuffer
from chatforge.settings import ModelPrice

PRICES = {"smollm2": ModelPrice(input=0.5, output=1.5), "big": ModelPrice(input=3.0, output=15.0)}


@pytest.fixture
async def platform(database_url):
    async with Platform(database_url) as started:
        yield started


def _record(n: int, **fields) -> UsageRecord:
    """A record priced as the service prices a request: once, from its model's price."""
    base = dict(request_id=f"req-{n}", model="smollm2", dialect="openai", prompt_tokens=10 + n,
                completion_tokens=2 * n, latency_s=0.01 * n, status="completed")
    fields = base | fields
    fields.setdefault("estimated_cost", PRICES[fields["model"]].cost(fields["prompt_tokens"], fields["completion_tokens"]))
    return UsageRecord(**fields)


async def _rows(platform) -> list[dict]:
    async with platform.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(t.usage).order_by(t.usage.c.id))]


def test_costs_follow_the_configured_prices():
    assert PRICES["smollm2"].cost(1000, 2000) == 0.0035
    assert PRICES["big"].cost(1_000_000, 1_000_000) == 18.0
    assert ModelPrice().cost(1000, 1000) == 0.0  # an unpriced model
    assert _record(3, prompt_tokens=1000, completion_tokens=2000).estimated_cost == 0.0035


def test_records_validate():
    with pytest.raises(InvalidInputError, match="cannot be negative"):
        _record(1, prompt_tokens=-1)
    with pytest.raises(InvalidInputError, match="cannot be negative"):
        _record(1, estimated_cost=-0.5)
    with pytest.raises(ValueError):
        _record(1, status="weird")
    assert _record(1, status="aborted").status is UsageStatus.ABORTED


async def test_each_row_equals_its_record_and_cost(platform):
    records = [_record(n, key_id=n % 2 or None, account_id=7, product_id=n if n % 3 == 0 else None,
                       deployment_id="dep" if n == 4 else None) for n in range(1, 6)]
    for r in records:
        await platform.record_usage(r)
    await platform.flush_usage()
    rows = await _rows(platform)
    assert len(rows) == 5
    # req-n: (10 + n) prompt tokens at 0.5 and 2n completion tokens at 1.5 USD per million
    assert [row["estimated_cost"] for row in rows] == pytest.approx([8.5e-06, 0.000012, 0.0000155, 0.000019, 0.0000225], rel=1e-12)
    for record, row in zip(records, rows):
        row.pop("id")
        assert row == {**record.__dict__, "status": record.status.value}


async def test_an_aborted_request_is_metered_even_when_its_task_is_cancelled(platform):
    started = asyncio.Event()

    async def handler():
        try:
            started.set()
            await asyncio.sleep(30)  # streaming tokens to a client that will go away
        finally:
            await platform.record_usage(_record(1, status="aborted", completion_tokens=3))

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await platform.flush_usage()
    rows = await _rows(platform)
    assert [(r["request_id"], r["status"], r["completion_tokens"]) for r in rows] == [("req-1", "aborted", 3)]


async def test_rows_queued_at_close_are_written(database_url):
    async with Platform(database_url) as platform:
        for n in range(300):
            await platform.record_usage(_record(n))
    async with Platform(database_url) as reopened:
        assert len(await _rows(reopened)) == 300


async def test_rows_wait_for_the_database_and_are_written_when_it_answers(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'late.db'}"
    engine = create_engine(url)  # no tables yet: every write fails as an outage would
    health = StoreHealth("database")
    buffer = UsageBuffer(engine, health, capacity=3)
    buffer.start()
    with caplog.at_level(logging.ERROR, logger="chatforge.platform"):
        for n in range(5):
            buffer.submit(_record(n))
        assert not await buffer.flush(timeout_s=0.5)
    assert (buffer.pending, buffer.dropped, health.up) == (3, 2, False)  # the buffer's bound, then counted drops
    assert "usage buffer full (3 rows)" in caplog.text and "database unavailable (OperationalError)" in caplog.text
    await upgrade(url)
    assert await buffer.flush(timeout_s=10)
    await buffer.close()
    async with engine.connect() as conn:
        assert [r.request_id for r in await conn.execute(select(t.usage).order_by(t.usage.c.id))] == ["req-0", "req-1", "req-2"]
    assert (buffer.pending, buffer.dropped, health.up) == (0, 2, True)
    await engine.dispose()


async def test_a_row_the_database_refuses_is_dropped_alone(database_url):
    """Not an outage (a NOT NULL the row breaks): the rest of its batch is written."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    buffer = UsageBuffer(engine)
    buffer.start()
    for n in range(4):
        buffer.submit(_record(n) if n != 2 else UsageRecord("req-2", None, "openai", 1, 1, 0.1, "completed"))  # NOT NULL
    assert await buffer.flush(timeout_s=30)
    await buffer.close()
    async with engine.connect() as conn:
        assert sorted(r.request_id for r in await conn.execute(select(t.usage))) == ["req-0", "req-1", "req-3"]
    assert buffer.dropped == 1
    await engine.dispose()


async def test_reports_sum_the_rows_by_every_grouping(platform):
    async with platform.engine.begin() as conn:
        alice = await accounts.create_account(conn, "alice")
        bob = await accounts.create_account(conn, "bob")
        _, ka = await keys.create_key(conn, ["alice"])
        _, kb = await keys.create_key(conn, ["bob"])
    old = datetime.now(timezone.utc) - timedelta(days=2)
    records = [
        _record(1, key_id=ka.id, account_id=alice.id, product_id=10),
        _record(2, key_id=ka.id, account_id=alice.id, model="big", deployment_id="d1"),
        _record(3, key_id=kb.id, account_id=bob.id, model="big", status="aborted"),
        _record(4, key_id=kb.id, account_id=bob.id, product_id=10, created_at=old),
        _record(5),  # open mode: no key, no account
    ]
    for r in records:
        await platform.record_usage(r)
    costs = [r.estimated_cost for r in records]
    await platform.flush_usage()

    def expected(pick):
        groups: dict = {}
        for record, cost in zip(records, costs):
            row = groups.setdefault(pick(record), [0, 0, 0, []])
            row[0] += 1
            row[1] += record.prompt_tokens
            row[2] += record.completion_tokens
            row[3].append(cost)
        return groups

    prefixes = {ka.id: ka.prefix, kb.id: kb.prefix, None: None}
    names = {alice.id: "alice", bob.id: "bob", None: None}
    picks = {
        "key": lambda r: prefixes[r.key_id],
        "account": lambda r: names[r.account_id],
        "model": lambda r: r.model,
        "product": lambda r: r.product_id,
        "deployment": lambda r: r.deployment_id,
    }
    async with platform.engine.connect() as conn:
        for by, pick in picks.items():
            got = await reports.usage_report(conn, by)
            want = expected(pick)
            assert [row.group for row in got] == sorted(want, key=lambda g: (g is None, g if g is not None else 0))
            for row in got:
                requests, prompt, completion, row_costs = want[row.group]
                assert (row.requests, row.prompt_tokens, row.completion_tokens) == (requests, prompt, completion)
                assert row.estimated_cost == pytest.approx(math.fsum(row_costs), rel=1e-12, abs=0)
        recent = await reports.usage_report(conn, "account", since=datetime.now(timezone.utc) - timedelta(days=1))
        assert [(r.group, r.requests) for r in recent] == [("alice", 2), ("bob", 1), (None, 1)]
        with pytest.raises(InvalidInputError, match="grouped by key, account, model, product, deployment"):
            await reports.usage_report(conn, "dialect")
        with pytest.raises(InvalidInputError, match="needs a timezone"):
            await reports.usage_report(conn, "key", since=datetime(2030, 1, 1))
