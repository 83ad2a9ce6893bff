"""Usage totals grouped by key, account, model, product or deployment (`chatforge usage`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chatforge.platform import tables as t
from chatforge.platform.errors import InvalidInputError

GROUPS = ("key", "account", "model", "product", "deployment")


@dataclass(frozen=True)
class UsageRow:
    group: str | int | None  # key prefix, account name, model id, product id or deployment id
    requests: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float  # USD


async def usage_report(conn: AsyncConnection, by: str = "account", since: datetime | None = None) -> list[UsageRow]:
    """One row per group, ordered by group (rows without one, e.g. from open mode, last)."""
    u = t.usage
    if by == "key":
        group, source = t.api_keys.c.prefix, u.outerjoin(t.api_keys, t.api_keys.c.id == u.c.key_id)
    elif by == "account":
        group, source = t.accounts.c.name, u.outerjoin(t.accounts, t.accounts.c.id == u.c.account_id)
    elif by in ("model", "product", "deployment"):
        group, source = {"model": u.c.model, "product": u.c.product_id, "deployment": u.c.deployment_id}[by], u
    else:
        raise InvalidInputError(f"usage can be grouped by {', '.join(GROUPS)}, not {by!r}")
    query = (
        select(
            group.label("group"),
            func.count().label("requests"),
            func.coalesce(func.sum(u.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(u.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(u.c.estimated_cost), 0.0).label("estimated_cost"),
        )
        .select_from(source)
        .group_by(group)
    )
    if since is not None:
        if since.tzinfo is None:
            raise InvalidInputError("'since' needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        query = query.where(u.c.created_at >= since)
    rows = [
        UsageRow(r.group, int(r.requests), int(r.prompt_tokens), int(r.completion_tokens), float(r.estimated_cost))
        for r in await conn.execute(query)
    ]
    return sorted(rows, key=lambda r: (r.group is None, r.group if r.group is not None else 0))
