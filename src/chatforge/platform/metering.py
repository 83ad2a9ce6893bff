"""Metering: one usage row per request, finished, failed or aborted, with its estimated cost
(computed once, by the service from the model's price, and carried in the record as the
response's `usage` said it), and one per request refused by a rate limit (no tokens, no cost),
so refusals are counted per account and over time like the rest.

The rows travel to the database through `usage_buffer.UsageBuffer` (written off the request
path, held through a database outage). Rows carry token counts, never text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from chatforge.platform import tables as t
from chatforge.platform.errors import InvalidInputError


class UsageStatus(StrEnum):
    COMPLETED = "completed"  # answered in full (any finish reason)
    ABORTED = "aborted"  # the client went away, or the server shut down mid-request
    FAILED = "failed"  # an error after the model was reached
    RATE_LIMITED = "rate_limited"  # refused by a rate limit before reaching a model: no tokens, no cost
    TIMED_OUT = "timed_out"  # past the request or queue timeout: ended, its tokens so far counted


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    model: str  # the canonical model id
    dialect: str  # "openai", "infomaniak", "egp", ...
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from receipt to the last byte (or the abort)
    status: UsageStatus
    estimated_cost: float = 0.0  # USD, the figure the response's usage carried
    key_id: int | None = None  # None in open mode
    account_id: int | None = None  # the account billed: the product's or deployment's owner
    product_id: int | None = None
    deployment_id: str | None = None
    created_at: datetime = field(default_factory=t.utcnow)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", UsageStatus(self.status))
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise InvalidInputError("token counts cannot be negative")
        if self.estimated_cost < 0:
            raise InvalidInputError("a cost cannot be negative")
