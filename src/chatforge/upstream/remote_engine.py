"""RemoteEngine: a model's engine on upstreams, with the surface of the in-process AsyncEngine
(`generate`, `finish`, `stats`, `is_running`), so ChatService runs on it unchanged.

One request, start to end:

1. The upstreams that honour every sampling field it sets are its candidates (none: a 400
   naming the field); of those, the ones not cooling down and not failing probes may take it.
2. The balancer picks one; a reader task relays its outputs through a queue.
3. A failure of that upstream before the first output is delivered tries another (at most
   `fleet.retries` more); a full upstream (overloaded, 429) likewise, without counting against it.
   After the first output, the request is lost: `RequestLostError`, which a stream tells its
   client in-band (and a request that does not stream runs again, api/serving.py).
4. `finish(request_id, reason)` (a stop string, a drain, a timeout) ends the request at once with
   that reason: a last output is made here and the upstream's stream is closed, which aborts the
   request there.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.stats import EngineStats
from chatforge.service import errors as service_errors
from chatforge.settings import FleetConfig
from chatforge.upstream.balancer import Balancer
from chatforge.upstream.capabilities import refusal_message, unhonoured
from chatforge.upstream.errors import NodeFailure
from chatforge.upstream.health import HealthMonitor, Upstream


class InvalidFieldError(engine_errors.InvalidRequestError):
    """A sampling field no upstream of the model honours; `param` names it."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class _Request:
    """One request's state across its attempts."""

    n: int
    logprobs: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # the current attempt's outputs
    finishing: FinishReason | None = None  # finish() was called
    num_prompt: int = 0
    cached: int = 0
    generated: list[int] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    delivered: bool = False  # an output went to the consumer: no retry from here on

    def __post_init__(self):
        self.generated, self.done = [0] * self.n, [False] * self.n

    def see(self, out: RequestOutput) -> None:
        self.delivered = True
        self.num_prompt, self.cached = out.num_prompt_tokens, out.num_cached_tokens
        for c in out.outputs:
            self.generated[c.index] = c.num_generated
            self.done[c.index] = self.done[c.index] or c.finish_reason is not None

    def ending(self, request_id: str, reason: FinishReason) -> RequestOutput:
        """The last output when the request is finished here, with `reason`."""
        completions = [CompletionOutput(i, [], [] if self.logprobs else None, self.generated[i], reason)
                       for i in range(self.n) if not self.done[i]]
        return RequestOutput(request_id, self.num_prompt, self.cached, completions, True)


_END = object()  # the reader's stream ended


class RemoteEngine:
    def __init__(self, model_id: str, upstreams: list[Upstream], config: FleetConfig):
        if not upstreams:
            raise ValueError(f"{model_id}: a remote engine needs at least one upstream")
        self.model_id = model_id
        self.upstreams = upstreams
        self.config = config
        self.balancer = Balancer(config.policy, affinity_tokens=config.affinity_tokens,
                                 abs_threshold=config.balance_abs_threshold, rel_threshold=config.balance_rel_threshold)
        self.health = HealthMonitor(upstreams, config, model_id)
        self._requests: dict[str, _Request] = {}

    # -- life cycle: within the server's event loop --------------------------------------------

    async def open(self) -> None:
        """Probe every upstream once, then keep probing in the background."""
        await self.health.probe_all()
        self.health.start()

    async def close(self) -> None:
        await self.health.stop()
        for u in self.upstreams:
            await u.client.close()

    def shutdown(self, grace_s: float = 0.0, timeout_s: float | None = None) -> None:
        """Nothing runs here: requests end with their streams (AsyncEngine's signature)."""

    @property
    def is_running(self) -> bool:
        now = time.monotonic()
        return any(u.usable(now) for u in self.upstreams)

    def stats(self) -> EngineStats:
        """This gateway's view: its requests in flight, the sequences its nodes report waiting.
        A new object on every call (the watchdog reads a repeated one as a stalled step)."""
        running = sum(u.outstanding for u in self.upstreams)
        waiting = sum(u.waiting for u in self.upstreams)
        return EngineStats(running=running, waiting=waiting, kv_usage=0.0, num_blocks_total=0, num_blocks_used=0,
                           prefix_cache_hit_tokens=0, prefix_cache_queried_tokens=0, preemptions=0, aborts=0,
                           prompt_tokens_total=0, generated_tokens_total=0)

    # -- requests ----------------------------------------------------------------------------

    def finish(self, request_id: str, reason: FinishReason = FinishReason.STOP_SEQUENCE) -> None:
        request = self._requests.get(request_id)
        if request is not None and request.finishing is None:
            request.finishing = reason
            request.queue.put_nowait(reason)

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        capable = self._capable(params)
        if request_id in self._requests:
            raise engine_errors.DuplicateRequestError(f"request {request_id} is already running")
        request = self._requests[request_id] = _Request(params.n, params.logprobs, num_prompt=len(prompt_ids))
        tried: list[Upstream] = []
        try:
            while True:
                upstream, affinity = self._choose(capable, prompt_ids, tried)
                tried.append(upstream)
                counters = upstream.counters
                counters.affinity_hits += affinity
                counters.affinity_misses += not affinity
                try:
                    async with aclosing(self._attempt(upstream, request_id, request, prompt_ids, params)) as outputs:
                        async for out in outputs:
                            yield out
                    return
                except NodeFailure as e:
                    self.health.failed(upstream, str(e), e.unreachable)
                    if request.delivered:
                        raise engine_errors.RequestLostError(
                            "the node serving this request went away mid-generation; retry the request") from e
                    last: engine_errors.EngineError = engine_errors.EngineDeadError(f"no upstream could serve the request: {e}")
                except engine_errors.EngineOverloadedError as e:
                    last = e
                if len(tried) > self.config.retries or not self._others(capable, tried):
                    raise last
                counters.retries += 1
        finally:
            del self._requests[request_id]

    async def _attempt(self, upstream: Upstream, request_id: str, request: _Request,
                       prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if request.finishing is not None:  # finished while waiting for an upstream
            yield request.ending(request_id, request.finishing)
            return
        request.queue = queue = asyncio.Queue()
        # A node id of its own per attempt: two gateways may carry the same caller's request id.
        stream = upstream.client.generate(f"{request_id}.{secrets.token_hex(3)}", prompt_ids, params)
        reader = asyncio.get_running_loop().create_task(_read(stream, queue))
        upstream.outstanding += 1
        started, outcome = time.perf_counter(), "failed"
        try:
            while True:
                item: Any = await queue.get()
                if isinstance(item, FinishReason):
                    outcome = "finished"
                    yield request.ending(request_id, item)
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, engine_errors.EngineOverloadedError):
                        outcome = "busy"
                    elif isinstance(item, (engine_errors.InvalidRequestError, engine_errors.PromptTooLongError)):
                        outcome = "refused"
                    raise item
                if item is _END:
                    raise NodeFailure(f"{upstream.url} ended the stream before the request finished")
                if not request.delivered:
                    upstream.counters.observe_latency(time.perf_counter() - started)
                out = item
                out.request_id = request_id
                request.see(out)
                if out.finished:  # set first: a consumer may close us as soon as it has the last output
                    outcome = "completed"
                yield out
                if out.finished:
                    return
        except GeneratorExit:
            if outcome not in ("completed", "finished"):
                outcome = "aborted"
            raise
        finally:
            upstream.outstanding -= 1
            upstream.counters.count(outcome)
            # Finished: the reader only has the stream's end left to read, which returns the
            # connection to the pool; cut short, the stream is closed (the node aborts).
            if outcome != "completed":
                reader.cancel()
            try:
                await reader
            except BaseException:  # noqa: BLE001 - cancelled, or its error was already relayed
                pass

    def check_sampling(self, params: SamplingParams) -> None:
        """The service's refusal (before admission) of a field no upstream here honours."""
        capable = [u for u in self.upstreams if unhonoured(u.kind, params) is None]
        if not capable:
            name = unhonoured(self.upstreams[0].kind, params)
            raise service_errors.InvalidRequestError(refusal_message(name, [u.kind for u in self.upstreams]), param=name)

    def _capable(self, params: SamplingParams) -> list[Upstream]:
        capable = [u for u in self.upstreams if unhonoured(u.kind, params) is None]
        if not capable:
            name = unhonoured(self.upstreams[0].kind, params)
            raise InvalidFieldError(refusal_message(name, [u.kind for u in self.upstreams]), param=name)
        return capable

    def _others(self, capable: list[Upstream], tried: list[Upstream]) -> bool:
        return any(u not in tried for u in capable)

    def _choose(self, capable: list[Upstream], prompt_ids: list[int], tried: list[Upstream]) -> tuple[Upstream, bool]:
        now = time.monotonic()
        candidates = [u for u in capable if u not in tried and u.usable(now)]
        if not candidates:
            # Everyone is cooling or failing probes: try the healthy, then anyone, rather than
            # refusing while a cooldown may be stale.
            candidates = [u for u in capable if u not in tried and u.healthy] or [u for u in capable if u not in tried]
        if not candidates:
            raise engine_errors.EngineDeadError(f"no upstream of {self.model_id} can take the request")
        pick = self.balancer.pick(candidates, prompt_ids)
        return pick.upstream, pick.affinity


async def _read(stream: AsyncIterator[RequestOutput], queue: asyncio.Queue) -> None:
    """Relay a client's outputs, then its end or its error, into `queue`."""
    try:
        async for out in stream:
            queue.put_nowait(out)
        queue.put_nowait(_END)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - the consumer raises it
        queue.put_nowait(e)
    finally:
        await stream.aclose()


@asynccontextmanager
async def remote_engines(catalog) -> AsyncIterator[None]:
    """The catalog's remote engines probing their upstreams for as long as the server runs."""
    engines = [m.engine for m in catalog.models if isinstance(m.engine, RemoteEngine)]
    for engine in engines:
        await engine.open()
    try:
        yield
    finally:
        for engine in engines:
            await engine.close()
