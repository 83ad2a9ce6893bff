"""`GET /v1/usage` and `GET /v1/usage/requests/{request_id}`: the caller's usage, as the dashboard
plots it and the playground prices a request with it.

The grouping is `chatforge usage`'s (key, account, model, product, deployment), over a window cut
into minute, hour or day buckets (UTC), with latency percentiles and the requests refused by a rate
limit. A key sees the rows billed to its accounts (only the selected one under
`x-selected-account-id`); open mode sees every row. Errors use OpenAI's envelope, as the rest of
`/v1`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from chatforge.api.deps import BearerPrincipal, PlatformDep
from chatforge.api.errors import dialect_route_class
from chatforge.api.openai import router as openai_dialect
from chatforge.platform import reports
from chatforge.platform.errors import InvalidInputError, NotFoundError
from chatforge.platform.gate import Principal

Group = str | int | None


class LatencyPercentiles(BaseModel):
    count: int  # completed requests measured
    p50: float
    p90: float
    p99: float


class GroupUsage(BaseModel):
    group: Group
    requests: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float
    rate_limited: int
    latency_s: LatencyPercentiles | None


class BucketUsage(BaseModel):
    start: datetime
    group: Group
    requests: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float
    rate_limited: int


class BucketLatency(LatencyPercentiles):
    start: datetime


class UsageReport(BaseModel):
    object: Literal["usage"]
    by: str
    bucket: str
    bucket_seconds: int
    since: datetime
    until: datetime
    latency_s: LatencyPercentiles | None  # every completed request of the window
    groups: list[GroupUsage]
    series: list[BucketUsage]
    latency: list[BucketLatency]


class RequestUsage(BaseModel):
    request_id: str
    created_at: datetime
    model: str
    dialect: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float
    latency_s: float
    product_id: int | None
    deployment_id: str | None


class UsageNotFoundError(NotFoundError):
    code = "usage_not_found"


def account_scope(principal: Principal) -> list[int] | None:
    """The account ids whose rows the caller may read; None: every row (open mode)."""
    if principal.key is None:
        return None
    if principal.selected:
        return [principal.account.id]
    return [a.id for a in principal.key.accounts]


def _instant(name: str, text: str | None) -> datetime | None:
    """An ISO time as written; never a bare number, which a lax parser would take for a Unix time."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"'{name}' is an ISO time with a zone, e.g. 2030-01-01T00:00:00Z; got {text!r}") from None


def _percentiles(latency: reports.Latency | None) -> dict | None:
    return None if latency is None else {"count": latency.count, "p50": latency.p50, "p90": latency.p90,
                                         "p99": latency.p99}


def _usage(row: reports.UsageRow) -> dict:
    return {"group": row.group, "requests": row.requests, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "estimated_cost": row.estimated_cost,
            "rate_limited": row.rate_limited}


def report_body(by: str, bucket: str, window: reports.Window, series: reports.UsageSeries) -> dict:
    return {
        "object": "usage", "by": by, "bucket": bucket, "bucket_seconds": window.bucket_s,
        "since": window.since, "until": window.until, "latency_s": _percentiles(series.overall_latency),
        "groups": [{**_usage(row), "latency_s": _percentiles(series.group_latency.get(row.group))}
                   for row in series.totals],
        "series": [{"start": b.start, **_usage(b.usage)} for b in series.buckets],
        "latency": [{"start": start, **_percentiles(latency)} for start, latency in series.latency],
    }


def build_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route_class(openai_dialect.render_error, openai_dialect.DIALECT), tags=["usage"])
    errors = {code: openai_dialect.ERROR_RESPONSES[code] for code in (400, 401, 403)}

    @router.get("/v1/usage", response_model=UsageReport, responses=errors,
                summary="The caller's requests, tokens, cost, latency and refusals over time")
    async def usage(
        principal: BearerPrincipal,
        platform: PlatformDep,
        by: Annotated[Literal[reports.GROUPS], Query(description="the grouping of `chatforge usage`")] = "account",
        bucket: Annotated[Literal[tuple(reports.BUCKETS)], Query(description="the plots' time step (UTC)")] = "hour",
        since: Annotated[str | None, Query(description="ISO time with a zone; default: 24 h before `until`",
                                           json_schema_extra={"format": "date-time"})] = None,
        until: Annotated[str | None, Query(description="ISO time with a zone, exclusive; default: now",
                                           json_schema_extra={"format": "date-time"})] = None,
    ):
        window = reports.Window.of(_instant("since", since), _instant("until", until), bucket)
        await platform.flush_usage()  # what this gateway has just served counts at once
        scope = account_scope(principal)
        series = await platform.read(lambda conn: reports.usage_series(conn, by, window, accounts=scope))
        return report_body(by, bucket, window, series)

    @router.get("/v1/usage/requests/{request_id}", response_model=RequestUsage,
                responses={**errors, 404: openai_dialect.ERROR_RESPONSES[404]},
                summary="One request's usage row, by the x-request-id its response carried")
    async def request_usage(principal: BearerPrincipal, platform: PlatformDep,
                            request_id: Annotated[str, Path(max_length=64)]):
        await platform.flush_usage()  # a response's row is queued before its last byte: write it first
        scope = account_scope(principal)
        row = await platform.read(lambda conn: reports.request_usage(conn, request_id, accounts=scope))
        if row is None:
            raise UsageNotFoundError(f"No usage row for request {request_id!r} among your accounts' "
                                     "(another gateway may not have written it yet).")
        return row.__dict__

    return router
