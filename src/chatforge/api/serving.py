"""The one serving template every dialect route runs (SGLang's serving_base shape):

    bounds -> admit -> stream or not -> (SSE loop -> the dialect's error frame) -> end

A route translates its wire body into a `ChatRequest` and hands it to `Serving.serve` with a
`Codec` factory: the codec is all a dialect adds (its JSON answer, its stream objects, how its
stream ends, on success or after a failure once the status line is sent). Around that, `Serving`
admits the request under the platform's limits once its prompt is tokenized, races the work
against the client's disconnect, opens streams so that errors before the first token still get a
proper status, and when a request ends, whatever way it ends, builds its `RequestOutcome` once:
metrics observe it, its usage row is written, its rate-limit reservation settled with the real
token count, and one log line says it (ids and counts, never text or keys).

Every admitted request is in flight until it ends: the drain (api/drain.py) waits for it and may
cut it short; the request timeout cuts it short itself (finish reason `length`); the queue
timeout withdraws it if the engine has not started it; a stream whose reader stalls is aborted
(api/sse.py). Each of these still ends through the same `_end`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatforge.api.disconnect import ClientDisconnected, until_disconnect
from chatforge.api.drain import Drain, DrainingError
from chatforge.api.errors import COUNTED_BY_SERVING, stream_failure
from chatforge.api.limits import QueueTimeoutError, RequestLimits, prompt_chars
from chatforge.api.metrics import Metrics
from chatforge.api.sse import sse_response
from chatforge.errors import ChatforgeError
from chatforge.logs import rename_request
from chatforge.platform.errors import RateLimitedError
from chatforge.platform.gate import Platform
from chatforge.platform.metering import UsageStatus
from chatforge.platform.rate_limit import Admission
from chatforge.platform.scopes import Caller
from chatforge.service.chat import ChatService, gather
from chatforge.service.errors import GenerationInterruptedError
from chatforge.service.prepare import PreparedChat
from chatforge.service.protocol import ChatEvent, ChatRequest, ChatResult, FinishReason, ModelScope, Usage

log = logging.getLogger("chatforge.api.requests")

RERUNS_WHEN_INTERRUPTED = 2


class Codec(Protocol):
    """How one dialect renders one admitted request's answer."""

    def response(self, result: ChatResult) -> dict[str, Any]:
        """The whole answer, for a request that does not stream."""

    def stream_frames(self, event: ChatEvent) -> Iterable[bytes]:
        """The SSE frames for one event (`data:` lines of the dialect's stream objects)."""

    def end_frames(self, error: ChatforgeError | None) -> list[bytes]:
        """The stream's last frames: after success (error None), or after a failure once the
        status line was sent (the error in the dialect's envelope, and maybe a closing marker)."""


@dataclass(frozen=True)
class RequestOutcome:
    """How an admitted request ended; built once, when it ends."""

    status: UsageStatus
    http_status: int | None  # what the caller was told: 200, or the error's status; None when aborted
    usage: Usage  # as of the last event the request produced
    started: float  # perf_counter at admission
    first_token: float | None  # when the first text arrived
    ended: float

    @property
    def metric_status(self) -> str:
        if self.status in (UsageStatus.ABORTED, UsageStatus.TIMED_OUT):
            return self.status.value
        return str(self.http_status)


@dataclass(frozen=True)
class Timeouts:
    """Copied from settings: `limits.request_timeout_s`, `limits.queue_timeout_s`,
    `server.stream_stall_timeout_s`."""

    request_s: float
    queue_s: float
    stall_s: float


@dataclass
class Ticket:
    """An admitted request: what it will run, who pays, and the reservation to settle."""

    dialect: str
    caller: Caller
    prep: PreparedChat
    admission: Admission
    started: float
    first_token: float | None = None
    usage: Usage | None = field(default=None)  # the running usage of the latest event
    cut_by: str | None = None  # "timeout", "drain" or "stall": why the request was ended early
    deadline: asyncio.TimerHandle | None = None  # the request timeout's timer

    @property
    def headers(self) -> dict[str, str]:
        """For the success response: the request id (its usage row's and log line's) and the
        x-ratelimit-* headers of the tightest scope (none when nothing limits the caller)."""
        return {"x-request-id": self.prep.request.request_id, **self.admission.headers}

    def see(self, event: ChatEvent) -> None:
        self.usage = event.usage
        if self.first_token is None and any(d.text or d.tool_calls for d in event.deltas):
            self.first_token = time.perf_counter()


class Serving:
    def __init__(self, service: ChatService, metrics: Metrics, platform: Platform, *,
                 limits: RequestLimits, timeouts: Timeouts, drain: Drain):
        self.service = service
        self.metrics = metrics
        self.platform = platform
        self.limits = limits
        self.timeouts = timeouts
        self.drain = drain
        self._settling: set[asyncio.Task] = set()  # strong references until each finishes

    async def serve(self, request: Request, dialect: str, req: ChatRequest, caller: Caller,
                    codec: Callable[[PreparedChat], Codec]) -> Response:
        """The whole template: check the bounds, admit, then answer with `codec(prep)` as JSON
        or as a stream."""
        rename_request(req.request_id)
        setattr(request.state, COUNTED_BY_SERVING, True)  # however it ends, it is counted below
        try:
            self.drain.refuse_new()
            self.limits.check(req)
        except ChatforgeError as e:
            self.metrics.observe_refused(dialect, req.model or "", str(e.status))
            raise
        try:
            ticket = await self.admit(dialect, req, caller)
        except ChatforgeError:
            raise  # counted by admit
        except Exception:
            self.metrics.observe_refused(dialect, req.model or "", "500")  # a bug: answered 500 by the route
            raise
        try:
            answer = codec(ticket.prep)
        except BaseException as e:
            await self._end(ticket, e)  # an admitted request always ends: its row, its reservation, the drain
            raise
        return await self.respond(request, ticket, answer)

    async def settled(self) -> None:
        """Wait for the rate-limit settlements still under way (before the limiter closes)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def admit(self, dialect: str, req: ChatRequest, caller: Caller) -> Ticket:
        """Resolve the model, render and tokenize the request, then admit it: the caller may use
        the model, and its key's and product's limits take the request and its most tokens."""
        started = time.perf_counter()
        product = caller.product.record if caller.product is not None else None
        try:
            model = self.service.resolve(req, model_scope(caller))
        except ChatforgeError as e:
            self.metrics.observe_refused(dialect, req.model or "", str(e.status))
            raise
        try:
            # The allow-lists first: a model the caller may not use costs no rendering or tokenizing.
            self.platform.check_model(caller.principal, model.model_id, aliases=model.aliases, product=product)
        except ChatforgeError as e:
            self._refused(dialect, model.model_id, caller, req, e)
            raise
        try:
            if _quick_to_prepare(req):  # a hop to a thread and back would cost more
                prep = self.service.prepare(req, model_scope(caller))
            else:  # off the event loop: rendering, tokenizing and compiling a grammar take milliseconds
                prep = await asyncio.to_thread(self.service.prepare, req, model_scope(caller))
        except ChatforgeError as e:
            self.metrics.observe_refused(dialect, req.model or "", str(e.status))
            raise
        try:
            admission = await self.platform.admit(
                caller.principal, prep.model.model_id, product, prep.num_prompt_tokens,
                prep.max_total_tokens - prep.num_prompt_tokens, aliases=prep.model.aliases,
            )
        except ChatforgeError as e:
            if isinstance(e, RateLimitedError):
                self.metrics.rate_limited.labels(dialect).inc()
                # a refusal is metered too (no tokens, no cost), so reports count it per account
                await self.platform.record_usage(caller.usage_record(
                    request_id=req.request_id, model=prep.model.model_id, dialect=dialect, prompt_tokens=0,
                    completion_tokens=0, estimated_cost=0.0, latency_s=time.perf_counter() - started,
                    status=UsageStatus.RATE_LIMITED))
                e.headers["x-request-id"] = req.request_id
            self._refused(dialect, prep.model.model_id, caller, req, e)
            raise
        if self.drain.draining:  # the drain began while this request waited for its admission
            await admission.settle(0)
            refusal = DrainingError()
            self._refused(dialect, prep.model.model_id, caller, req, refusal)
            raise refusal
        ticket = Ticket(dialect, caller, prep, admission, started)
        ticket.deadline = asyncio.get_running_loop().call_later(self.timeouts.request_s, self._cut, ticket, "timeout")
        self.drain.enter(req.request_id, lambda: self._cut(ticket, "drain"))
        return ticket

    def _refused(self, dialect: str, model_id: str, caller: Caller, req: ChatRequest, e: ChatforgeError) -> None:
        self.metrics.observe_refused(dialect, model_id, str(e.status))
        log.info("request %s refused dialect=%s key=%s status=%d code=%s", req.request_id, dialect,
                 caller.key_prefix, e.status, e.code)

    def _cut(self, ticket: Ticket, why: str) -> None:
        """End the request's engine work now; its answer ends as usual, with finish reason length."""
        if ticket.cut_by is None:
            ticket.cut_by = why
            log.info("request %s cut short by the %s", ticket.prep.request.request_id, why)
        self.service.end(ticket.prep, FinishReason.LENGTH)

    def _stalled(self, ticket: Ticket) -> None:
        ticket.cut_by = ticket.cut_by or "stall"
        self.metrics.stalled_streams.labels(ticket.dialect).inc()
        log.warning("request %s aborted: its reader took nothing for %.1f s", ticket.prep.request.request_id,
                    self.timeouts.stall_s)

    async def respond(self, request: Request, ticket: Ticket, codec: Codec) -> Response:
        if not ticket.prep.request.stream:
            result = await self._complete(request, ticket)
            return JSONResponse(codec.response(result), headers=ticket.headers)
        events = await self._open_stream(ticket)
        return sse_response(sse_frames(events, codec), headers=ticket.headers,
                            stall_timeout_s=self.timeouts.stall_s, on_stall=lambda: self._stalled(ticket))

    async def _complete(self, request: Request, ticket: Ticket) -> ChatResult:
        error: BaseException | None = None
        try:
            return await until_disconnect(request, self._gather(ticket))
        except BaseException as e:
            error = e
            raise
        finally:
            await self._end(ticket, error)

    async def _gather(self, ticket: Ticket) -> ChatResult:
        """The whole answer. Nothing of it was sent yet, so when the remote node running it went
        away part way, it runs again from the start (on another node) instead of failing."""
        for rerun in range(RERUNS_WHEN_INTERRUPTED + 1):
            try:
                return await gather(ticket.prep, self._events(ticket))
            except GenerationInterruptedError:
                if rerun == RERUNS_WHEN_INTERRUPTED:
                    raise
                ticket.usage = None  # the usage is the run that answers
                log.warning("request %s lost its node part way; running it again", ticket.prep.request.request_id)
        raise AssertionError("unreachable")

    async def _open_stream(self, ticket: Ticket) -> AsyncIterator[ChatEvent]:
        """Starts the stream and waits for its first event (so overload or any early error is
        an ordinary error response), then returns an iterator over all events."""
        events = self.service.stream(ticket.prep)
        try:
            first = await self._first(ticket, events)
        except BaseException as e:
            try:
                await events.aclose()
            finally:
                await self._end(ticket, e)
            raise
        return self._rest(ticket, first, events)

    async def _first(self, ticket: Ticket, events: AsyncIterator[ChatEvent]) -> ChatEvent | None:
        """The request's first event (None: its events ended without one); none within the
        queue timeout withdraws it (QueueTimeoutError)."""
        queue = asyncio.timeout(self.timeouts.queue_s)
        try:
            async with queue:
                first = await anext(events)
        except TimeoutError:
            if not queue.expired():
                raise
            ticket.cut_by = "timeout"
            raise QueueTimeoutError(self.timeouts.queue_s) from None
        except StopAsyncIteration:
            return None
        ticket.see(first)
        return first

    async def _events(self, ticket: Ticket) -> AsyncIterator[ChatEvent]:
        """The request's events, each seen by its ticket."""
        async with aclosing(self.service.stream(ticket.prep)) as events:
            first = await self._first(ticket, events)
            if first is None:
                return
            yield first
            async for event in events:
                ticket.see(event)
                yield event

    async def _rest(self, ticket: Ticket, first: ChatEvent | None, events: AsyncIterator[ChatEvent]):
        """A stream's events from its first on; ends the request however the stream ends.
        NOTE: it reads the service's events itself (not through `_events`): one layer less per token."""
        error: BaseException | None = None
        try:
            if first is not None:
                yield first
                async for event in events:
                    ticket.see(event)
                    yield event
        except BaseException as e:
            error = e
            raise
        finally:
            try:
                await events.aclose()
            finally:
                await self._end(ticket, error)

    async def _end(self, ticket: Ticket, error: BaseException | None) -> None:
        """Once per admitted request. Everything but the settlement is synchronous, so it all
        happens even in the `finally` of a task cancelled because its client went away. The
        settlement (a Redis round trip) runs as a task of its own behind a shield: a cancelled
        request stops waiting for it, and it completes all the same."""
        if ticket.deadline is not None:
            ticket.deadline.cancel()
        self.drain.leave(ticket.prep.request.request_id)
        outcome = _outcome(ticket, error)
        prep, caller = ticket.prep, ticket.caller
        self.metrics.observe(ticket.dialect, prep.model.model_id, outcome)
        self.metrics.observe_constrained(prep.model.model_id, prep.constraint_kind, error)
        usage = outcome.usage
        await self.platform.record_usage(caller.usage_record(
            request_id=prep.request.request_id, model=prep.model.model_id, dialect=ticket.dialect,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            estimated_cost=usage.estimated_cost, latency_s=outcome.ended - outcome.started, status=outcome.status,
        ))
        account = caller.billed_account
        log.info(
            "request %s dialect=%s model=%s key=%s account=%s status=%s prompt_tokens=%d completion_tokens=%d latency=%.3fs",
            prep.request.request_id, ticket.dialect, prep.model.model_id, caller.key_prefix,
            account.name if account is not None else "-", outcome.metric_status,
            usage.prompt_tokens, usage.completion_tokens, outcome.ended - outcome.started,
        )
        task = asyncio.get_running_loop().create_task(ticket.admission.settle(usage.total_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)


async def sse_frames(events: AsyncIterator[ChatEvent], codec: Codec) -> AsyncIterator[bytes]:
    """SSE bytes for a stream that has begun. Its status line is sent, so a failure becomes the
    dialect's error frame (as vLLM and OpenAI send it; the clients raise on it). Closing this
    closes `events` (the request ends at once, not when the collector gets to it)."""
    try:
        async with aclosing(events):
            async for event in events:
                for frame in codec.stream_frames(event):
                    yield frame
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client
        for frame in codec.end_frames(stream_failure(exc)):
            yield frame
        return
    for frame in codec.end_frames(None):
        yield frame


# Text up to this long, with no tools, output format or caller's template, renders and tokenizes
# in well under a millisecond.
QUICK_PREPARE_CHARS = 2000


def _quick_to_prepare(req: ChatRequest) -> bool:
    """No grammar to compile (a history with tool calls gets one, and a model's first grammar
    builds llguidance's vocabulary: seconds) and little text."""
    history_with_tools = req.prompts is None and any(m.tool_calls or m.role == "tool" for m in req.messages)
    return (not req.tools and req.output_format is None and req.chat_template is None and not history_with_tools
            and prompt_chars(req) <= QUICK_PREPARE_CHARS)


def model_scope(caller: Caller) -> ModelScope | None:
    """The models the caller's product or deployment offers (None: any served model)."""
    if caller.product is not None:
        p = caller.product
        return ModelScope(f"product {p.id}", p.models, p.default_model)
    if caller.deployment is not None:
        return ModelScope(f"deployment {caller.deployment.id!r}", (), caller.deployment.model)
    return None


def _outcome(ticket: Ticket, error: BaseException | None) -> RequestOutcome:
    if error is None:
        status, http_status = UsageStatus.COMPLETED, 200
    elif isinstance(error, (asyncio.CancelledError, GeneratorExit, ClientDisconnected)):
        status, http_status = UsageStatus.ABORTED, None
    else:
        status, http_status = UsageStatus.FAILED, error.status if isinstance(error, ChatforgeError) else 500
    if ticket.cut_by == "timeout":
        status = UsageStatus.TIMED_OUT
    elif ticket.cut_by == "drain" and status is UsageStatus.COMPLETED:
        status = UsageStatus.ABORTED  # answered in full, but cut short by the shutdown
    prep = ticket.prep
    usage = ticket.usage or Usage(prep.num_prompt_tokens, 0, prep.model.price.cost(prep.num_prompt_tokens, 0))
    return RequestOutcome(status, http_status, usage, ticket.started, ticket.first_token, time.perf_counter())
