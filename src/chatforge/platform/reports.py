"""Usage totals grouped by key, account, model, product or deployment (`chatforge usage`), and
the same grouping over time buckets with latency percentiles (`GET /v1/usage`, the dashboard).

A row with status `rate_limited` is a refusal: it reached no model and costs nothing, so reports
count it in `rate_limited`, apart from `requests`. Latency percentiles are over completed requests
(an abort or a failure says nothing about how fast answers come). Buckets are aligned on the Unix
epoch in UTC: a day bucket starts at midnight UTC. `accounts` scopes every report to the rows
billed to those account ids; None reads every row (open mode, the operator's CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chatforge.platform import tables as t
from chatforge.quantiles import quantile
from chatforge.platform.errors import InvalidInputError
from chatforge.platform.metering import UsageStatus

GROUPS = ("key", "account", "model", "product", "deployment")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_BUCKETS = 1500  # a window wider than this many buckets asks for a coarser bucket
PERCENTILES = (0.5, 0.9, 0.99)

Group = str | int | None  # key prefix, account name, model id, product id or deployment id


@dataclass(frozen=True)
class UsageRow:
    group: Group
    requests: int  # requests that reached a model (completed, aborted or failed)
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float  # USD
    rate_limited: int = 0  # requests refused by a rate limit


@dataclass(frozen=True)
class Latency:
    """End-to-end latency percentiles (seconds) of `count` completed requests, interpolated
    linearly between ranks (PostgreSQL's `percentile_cont`)."""

    count: int
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime  # exclusive
    bucket_s: int

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None, bucket: str) -> Window:
        """A checked window; by default the 24 hours up to now."""
        if bucket not in BUCKETS:
            raise InvalidInputError(f"bucket is one of {', '.join(BUCKETS)}, not {bucket!r}")
        until = until or datetime.now(timezone.utc)
        since = since or until - timedelta(days=1)
        for name, value in (("since", since), ("until", until)):
            if value.tzinfo is None:
                raise InvalidInputError(f"'{name}' needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        if since >= until:
            raise InvalidInputError("'since' must come before 'until'")
        width = BUCKETS[bucket]
        if (until - since).total_seconds() / width > MAX_BUCKETS:
            raise InvalidInputError(
                f"more than {MAX_BUCKETS} {bucket} buckets: choose a larger bucket or a shorter window")
        return cls(since, until, width)


@dataclass(frozen=True)
class BucketRow:
    start: datetime  # the bucket's first instant, UTC
    usage: UsageRow


@dataclass(frozen=True)
class UsageSeries:
    totals: list[UsageRow]  # one per group over the whole window, as `usage_report`
    overall_latency: Latency | None  # every completed request of the window; None without any
    group_latency: dict[Group, Latency]  # the groups with completed requests
    buckets: list[BucketRow]  # one per (bucket, group) with rows, in time order
    latency: list[tuple[datetime, Latency]]  # one per bucket with completed requests, in time order


def _group_source(by: str):
    u = t.usage
    if by == "key":
        return t.api_keys.c.prefix, u.outerjoin(t.api_keys, t.api_keys.c.id == u.c.key_id)
    if by == "account":
        return t.accounts.c.name, u.outerjoin(t.accounts, t.accounts.c.id == u.c.account_id)
    if by in ("model", "product", "deployment"):
        return {"model": u.c.model, "product": u.c.product_id, "deployment": u.c.deployment_id}[by], u
    raise InvalidInputError(f"usage can be grouped by {', '.join(GROUPS)}, not {by!r}")


def _sums():
    u = t.usage
    refused = u.c.status == UsageStatus.RATE_LIMITED.value
    return (
        func.sum(case((refused, 0), else_=1)).label("requests"),
        func.coalesce(func.sum(u.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(u.c.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(u.c.estimated_cost), 0.0).label("estimated_cost"),
        func.sum(case((refused, 1), else_=0)).label("rate_limited"),
    )


def _filters(since: datetime | None, until: datetime | None, accounts: Sequence[int] | None) -> list:
    u = t.usage
    found = []
    if since is not None:
        if since.tzinfo is None:
            raise InvalidInputError("'since' needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        found.append(u.c.created_at >= since)
    if until is not None:
        found.append(u.c.created_at < until)
    if accounts is not None:
        found.append(u.c.account_id.in_(list(accounts)))
    return found


def _usage_row(group: Group, r) -> UsageRow:
    return UsageRow(group, int(r.requests), int(r.prompt_tokens), int(r.completion_tokens), float(r.estimated_cost),
                    int(r.rate_limited))


def _by_group(row: UsageRow):
    """Groups in order, the rows without one (e.g. from open mode) last."""
    return row.group is None, row.group if row.group is not None else 0


async def usage_report(conn: AsyncConnection, by: str = "account", since: datetime | None = None, *,
                       until: datetime | None = None, accounts: Sequence[int] | None = None) -> list[UsageRow]:
    """One row per group, ordered by group (rows without one, e.g. from open mode, last)."""
    group, source = _group_source(by)
    query = select(group.label("group"), *_sums()).select_from(source).where(*_filters(since, until, accounts))
    rows = [_usage_row(r.group, r) for r in await conn.execute(query.group_by(group))]
    return sorted(rows, key=_by_group)


def _bucket_start(conn: AsyncConnection, width: int):
    """The epoch second at which a row's bucket starts, in the database's own SQL."""
    created = t.usage.c.created_at
    if conn.dialect.name == "postgresql":
        return func.floor(func.extract("epoch", created) / width) * width
    return cast(func.strftime("%s", created), Integer) // width * width  # SQLite keeps UTC text


def _utc(epoch) -> datetime:
    return datetime.fromtimestamp(int(epoch), tz=timezone.utc)


async def usage_series(conn: AsyncConnection, by: str, window: Window, *,
                       accounts: Sequence[int] | None = None) -> UsageSeries:
    """`usage_report` over `window`, then per bucket and group, with latency percentiles per
    group and per bucket."""
    group, source = _group_source(by)
    start = _bucket_start(conn, window.bucket_s).label("start")
    where = _filters(window.since, window.until, accounts)
    query = (select(start, group.label("group"), *_sums()).select_from(source).where(*where)
             .group_by(start, group).order_by(start))
    buckets = [BucketRow(_utc(r.start), _usage_row(r.group, r)) for r in await conn.execute(query)]
    buckets.sort(key=lambda b: (b.start, *_by_group(b.usage)))
    totals = await usage_report(conn, by, window.since, until=window.until, accounts=accounts)
    overall = (await _latencies(conn, None, source, where)).get(None)
    group_latency = await _latencies(conn, group, source, where)
    bucket_latency = await _latencies(conn, start, source, where)
    return UsageSeries(totals, overall, group_latency, buckets,
                       sorted((_utc(s), lat) for s, lat in bucket_latency.items()))


async def _latencies(conn: AsyncConnection, key, source, where: list) -> dict:
    """Latency percentiles of the completed requests, per value of `key` (None: all of them,
    under the key None). PostgreSQL computes them; SQLite has no percentile function, so its
    latencies are read and interpolated here the same way."""
    completed = [*where, t.usage.c.status == UsageStatus.COMPLETED.value]
    latency = t.usage.c.latency_s
    keys = [] if key is None else [key.label("k")]
    if conn.dialect.name == "postgresql":
        cuts = [func.percentile_cont(p).within_group(latency) for p in PERCENTILES]
        query = select(*keys, func.count(), *cuts).select_from(source).where(*completed)
        if key is not None:
            query = query.group_by(key)
        rows = [(None, *r) if key is None else tuple(r) for r in await conn.execute(query)]
        return {r[0]: Latency(int(r[1]), *map(float, r[2:])) for r in rows if r[1]}
    order = [] if key is None else [key]
    query = select(*keys, latency).select_from(source).where(*completed).order_by(*order, latency)
    values: dict = {}
    for row in await conn.execute(query):
        values.setdefault(None if key is None else row[0], []).append(float(row[-1]))
    return {k: Latency(len(v), *(quantile(v, p) for p in PERCENTILES)) for k, v in values.items()}


@dataclass(frozen=True)
class RequestUsage:
    """One request's usage row, as the response's `x-request-id` names it."""

    request_id: str
    created_at: datetime
    model: str
    dialect: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float  # USD
    latency_s: float
    product_id: int | None
    deployment_id: str | None


async def request_usage(conn: AsyncConnection, request_id: str, *,
                        accounts: Sequence[int] | None = None) -> RequestUsage | None:
    """The row of `request_id` if it is billed to one of `accounts` (None: any), else None."""
    u = t.usage
    fields = [getattr(u.c, name) for name in RequestUsage.__dataclass_fields__]
    query = select(*fields).where(u.c.request_id == request_id, *_filters(None, None, accounts)).limit(1)
    row = (await conn.execute(query)).first()
    return RequestUsage(**row._mapping) if row is not None else None
