"""What every dialect does around the service, in one place: admit the request under the
platform's limits once its prompt is tokenized, race the work against the client's disconnect,
open streams so that errors before the first token still get a proper status, and, when a request
ends, whatever way it ends: observe metrics, write its usage row, settle its rate-limit
reservation with the real token count, and log one line (ids and counts, never text or keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from chatforge.api.deps import Caller
from chatforge.api.disconnect import ClientDisconnected, until_disconnect
from chatforge.api.metrics import Metrics
from chatforge.platform.accounts import Account
from chatforge.platform.errors import PlatformError, RateLimitedError
from chatforge.platform.gate import Platform
from chatforge.platform.metering import UsageRecord, UsageStatus
from chatforge.platform.rate_limit import Admission
from chatforge.service.chat import ChatService, PreparedChat
from chatforge.service.errors import ChatError
from chatforge.service.protocol import ChatEvent, ChatRequest, ChatResult

log = logging.getLogger("chatforge.api.requests")


@dataclass
class Ticket:
    """An admitted request: what it will run, who pays, and the reservation to settle."""

    dialect: str
    caller: Caller
    prep: PreparedChat
    admission: Admission

    @property
    def headers(self) -> dict[str, str]:
        """For the success response: the request id (its usage row's and log line's) and the
        x-ratelimit-* headers of the tightest scope (none when nothing limits the caller)."""
        return {"x-request-id": self.prep.request.request_id, **self.admission.headers}


class Serving:
    def __init__(self, service: ChatService, metrics: Metrics, platform: Platform):
        self.service = service
        self.metrics = metrics
        self.platform = platform
        self._settling: set[asyncio.Task] = set()  # strong references until each finishes

    async def admit(self, dialect: str, req: ChatRequest, caller: Caller) -> Ticket:
        """Render and tokenize the request, then admit it: the caller may use the model, and its
        key's and product's limits take the request and prompt + max_tokens * n tokens."""
        try:
            prep = self.service.prepare(req)
        except ChatError as e:
            self.metrics.observe_refused(dialect, req.model or "", str(e.status))
            raise
        product = caller.product.record if caller.product is not None else None
        try:
            admission = await self.platform.admit(
                caller.principal, prep.model.model_id, product, len(prep.prompt_ids),
                prep.sampling.max_tokens * prep.sampling.n, aliases=prep.model.aliases,
            )
        except PlatformError as e:
            if isinstance(e, RateLimitedError):
                self.metrics.rate_limited.labels(dialect).inc()
                # a refusal is metered too (no tokens, no cost), so reports count it per account
                refusal, _ = _usage_record(dialect, caller, prep, "rate_limited")
                await self.platform.record_usage(refusal)
                e.headers["x-request-id"] = req.request_id
            self.metrics.observe_refused(dialect, prep.model.model_id, str(e.status))
            log.info("request %s refused dialect=%s key=%s status=%d code=%s", req.request_id, dialect,
                     _key_prefix(caller), e.status, e.code)
            raise
        return Ticket(dialect, caller, prep, admission)

    async def complete(self, request: Request, ticket: Ticket) -> ChatResult:
        status = "500"
        try:
            result = await until_disconnect(request, self.service.complete(ticket.prep))
            status = "200"
            return result
        except ClientDisconnected:
            status = "aborted"
            raise
        except ChatError as e:
            status = str(e.status)
            raise
        finally:
            await self._end(ticket, status)

    async def open_stream(self, ticket: Ticket) -> AsyncIterator[ChatEvent]:
        """Starts the stream and waits for its first event (so overload or any early error is
        an ordinary error response), then returns an iterator over all events."""
        events = self.service.stream(ticket.prep)
        try:
            first = await anext(events)
        except BaseException as e:
            try:
                await events.aclose()
            finally:
                await self._end(ticket, _status_of(e))
            raise
        return self._rest(ticket, first, events)

    async def _rest(self, ticket: Ticket, first: ChatEvent, events: AsyncIterator[ChatEvent]):
        status = "500"
        try:
            yield first
            async for event in events:
                yield event
            status = "200"
        except BaseException as e:
            status = _status_of(e)
            raise
        finally:
            try:
                await events.aclose()
            finally:
                await self._end(ticket, status)

    async def _end(self, ticket: Ticket, status: str) -> None:
        """Once per admitted request. Everything but the settlement is synchronous, so it all
        happens even in the `finally` of a task cancelled because its client went away. The
        settlement (a Redis round trip) runs as a task of its own behind a shield: a cancelled
        request stops waiting for it, and it completes all the same."""
        self.metrics.observe(ticket.dialect, ticket.prep, status)
        record, account = _usage_record(ticket.dialect, ticket.caller, ticket.prep, status)
        await self.platform.record_usage(record)
        log.info(
            "request %s dialect=%s model=%s key=%s account=%s status=%s prompt_tokens=%d completion_tokens=%d latency=%.3fs",
            record.request_id, record.dialect, record.model, _key_prefix(ticket.caller),
            account.name if account is not None else "-",
            status, record.prompt_tokens, record.completion_tokens, record.latency_s,
        )
        total = record.prompt_tokens + record.completion_tokens
        task = asyncio.get_running_loop().create_task(ticket.admission.settle(total))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)


def _usage_record(dialect: str, caller: Caller, prep: PreparedChat, status: str) -> tuple[UsageRecord, Account | None]:
    """The request's usage row, and the account it bills: the product's or deployment's owner,
    else the caller's acting account (None in open mode). A refused request used no tokens."""
    refused = status == "rate_limited"
    product = caller.product.record if caller.product is not None else None
    deployment = caller.deployment.record if caller.deployment is not None else None
    account = caller.principal.billed_account(product, deployment)
    key = caller.principal.key
    end = prep.timing.end if prep.timing.end is not None else time.perf_counter()
    record = UsageRecord(
        request_id=prep.request.request_id,
        model=prep.model.model_id,
        dialect=dialect,
        prompt_tokens=0 if refused else len(prep.prompt_ids),
        completion_tokens=prep.completion_tokens,
        latency_s=end - prep.timing.start,
        status=_usage_status(status),
        key_id=key.id if key is not None else None,
        account_id=account.id if account is not None else None,
        product_id=caller.product.usage_id if caller.product is not None else None,
        deployment_id=caller.deployment.usage_id if caller.deployment is not None else None,
    )
    return record, account


def _key_prefix(caller: Caller) -> str:
    key = caller.principal.key
    return key.prefix if key is not None else "-"


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit, ClientDisconnected)):
        return "aborted"
    return str(getattr(exc, "status", 500))


def _usage_status(status: str) -> UsageStatus:
    if status == "200":
        return UsageStatus.COMPLETED
    if status == "aborted":
        return UsageStatus.ABORTED
    if status == "rate_limited":
        return UsageStatus.RATE_LIMITED
    return UsageStatus.FAILED
