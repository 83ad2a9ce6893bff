"""The engine behind an asyncio server: `LLMEngine.step()` in a loop on ONE dedicated thread.

Every engine call happens on that thread. The event loop talks to it through a thread-safe
command queue (add, abort, finish, stop); the thread hands outputs back with
`loop.call_soon_threadsafe` into one mailbox per request, one call per event loop and step. A
stream reads a mailbox once per token, so it is a deque and at most one waiting future, not an
asyncio.Queue (whose bounds and bookkeeping cost a dozen calls a token). When a consumer stops iterating `generate()` (the client went away, the task was
cancelled), the request is aborted on the thread's next pass and its blocks return to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch

from chatforge.engine.errors import EngineDeadError, StepFailedError
from chatforge.engine.llm_engine import LLMEngine
from chatforge.engine.outputs import FinishReason, RequestOutput
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.stats import EngineStats


log = logging.getLogger("chatforge.engine")

# Failed steps in a row after which the loop stops (then /health reports it and requests get 503).
_MAX_CONSECUTIVE_FAILURES = 3


class _Stream:
    """One request's outputs on their way to its consumer; `put` and `get` on its event loop only."""

    __slots__ = ("loop", "items", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: deque = deque()  # RequestOutput, or the exception to raise in the consumer
        self.waiter: asyncio.Future | None = None  # the consumer's, while it waits for an item

    def put(self, item) -> None:
        self.items.append(item)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():  # done: the consumer was cancelled meanwhile
            waiter.set_result(None)

    async def get(self):
        while not self.items:
            self.waiter = self.loop.create_future()
            await self.waiter
        return self.items.popleft()


@dataclass
class _Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: _Stream


@dataclass
class _End:
    request_id: str
    reason: FinishReason  # ABORT counts as an abort; anything else does not


@dataclass
class _Stop:
    deadline: float  # time.monotonic() after which in-flight requests are aborted


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # touched by the engine thread only
        self._thread: threading.Thread | None = None
        self._stats = engine.stats()  # the latest snapshot, swapped whole by the engine thread
        self._accepting = False
        self._error: BaseException | None = None  # what killed the loop, if anything
        self._stop: _Stop | None = None

    # -- life cycle (event loop side) --------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine loop was already started")
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="chatforge-engine", daemon=True)
        self._thread.start()

    def shutdown(self, grace_s: float = 0.0, timeout_s: float | None = 30.0) -> None:
        """Stop admitting; let in-flight requests run for up to `grace_s`, abort the rest, and
        join the thread. Blocking: call it from a worker thread (`asyncio.to_thread`) in a server."""
        self._accepting = False
        if self._thread is None:
            return
        self._commands.put(_Stop(time.monotonic() + grace_s))
        self._thread.join(timeout_s)

    @property
    def is_running(self) -> bool:
        """True while the loop thread is alive and accepting work (what /health reports)."""
        return self._accepting and self._thread is not None and self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stats(self) -> EngineStats:
        return self._stats

    # -- requests (event loop side) ----------------------------------------------------------

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs until its last one (`finished=True`).

        Errors from admission (PromptTooLongError, EngineOverloadedError, ...) are raised at the
        first iteration. Closing the iterator early aborts the request."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running") from self._error
        stream = _Stream(asyncio.get_running_loop())
        self._commands.put(_Add(request_id, list(prompt_ids), params, stream))
        done = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = item.finished
                yield item
                if done:
                    return
        finally:
            if not done:
                self._commands.put(_End(request_id, FinishReason.ABORT))

    def finish(self, request_id: str, reason: FinishReason = FinishReason.STOP_SEQUENCE) -> None:
        """End a request with `reason`: by default a matched stop string (not an abort); with
        FinishReason.ABORT it counts as an abort."""
        self._commands.put(_End(request_id, reason))

    # -- the loop (engine thread) ------------------------------------------------------------

    def _run(self) -> None:
        threads = self.engine.torch_threads
        if threads is not None:
            # OpenMP's thread count is a per-thread setting: set where the engine's torch work runs.
            torch.set_num_threads(threads)
        failures = 0  # consecutive failed steps
        try:
            while self._handle_commands(block=not self.engine.has_unfinished()):
                failed: StepFailedError | None = None
                try:
                    outputs = self.engine.step() if self.engine.has_unfinished() else []
                except StepFailedError as e:
                    # The step's requests are ended; their consumers hear why, the rest go on.
                    # Steps that keep failing whatever they hold mean the engine itself is broken.
                    failures += 1
                    if failures >= _MAX_CONSECUTIVE_FAILURES:
                        raise
                    log.error("engine step failed; ended requests %s", e.request_ids, exc_info=e.__cause__)
                    failed, outputs = e, []
                else:
                    failures = 0
                # Before delivery, failures included: a consumer may read the stats at once.
                self._stats = self.engine.stats()
                if failed is not None:
                    for request_id in failed.request_ids:
                        stream = self._streams.pop(request_id, None)
                        if stream is not None:
                            self._send(stream, failed)
                self._deliver(outputs)
        except BaseException as e:  # noqa: BLE001 - every waiting consumer must hear of it
            self._error = e
            self._accepting = False
            dead = EngineDeadError(f"the engine loop failed: {e!r}")
            dead.__cause__ = e
            for stream in self._streams.values():
                self._send(stream, dead)
            self._streams.clear()
            raise
        finally:
            self._stats = self.engine.stats()

    def _handle_commands(self, block: bool) -> bool:
        """Apply queued commands (waiting for one when idle). False when the loop must end."""
        if self._stop is None and block:
            self._apply(self._commands.get())
        while True:
            try:
                self._apply(self._commands.get_nowait())
            except queue.Empty:
                break
        if self._stop is not None and (not self.engine.has_unfinished() or time.monotonic() >= self._stop.deadline):
            for request_id in list(self._streams):
                self._end(_End(request_id, FinishReason.ABORT))
            return False
        return True

    def _apply(self, command) -> None:
        if isinstance(command, _Add):
            self._add(command)
        elif isinstance(command, _End):
            self._end(command)
        elif isinstance(command, _Stop):
            self._stop = command

    def _add(self, command: _Add) -> None:
        if self._stop is not None:
            self._send(command.stream, EngineDeadError("the engine is shutting down"))
            return
        try:
            self.engine.add_request(command.request_id, command.prompt_ids, command.params)
        except Exception as e:  # the engine's typed errors, raised in the consumer
            self._send(command.stream, e)
            return
        self._streams[command.request_id] = command.stream
        # A fresh snapshot that shows the work: the watchdog takes a snapshot holding work that
        # outlives its limit for a stuck step, also the first step after an idle engine.
        self._stats = self.engine.stats()

    def _end(self, command: _End) -> None:
        if command.reason is FinishReason.ABORT:
            out = self.engine.abort(command.request_id)
        else:
            out = self.engine.finish(command.request_id, command.reason)
        self._stats = self.engine.stats()
        stream = self._streams.pop(command.request_id, None)
        if out is not None and stream is not None:
            self._send(stream, out)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """One call_soon_threadsafe per event loop for the whole step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            by_loop.setdefault(stream.loop, []).append((stream, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                for _, out in items:
                    if not out.finished:
                        self._end(_End(out.request_id, FinishReason.ABORT))

    def _send(self, stream: _Stream, item: RequestOutput | BaseException) -> None:
        try:
            stream.loop.call_soon_threadsafe(stream.put, item)
        except RuntimeError:
            pass  # the consumer's event loop is closed


def _put_all(items: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, out in items:
        stream.put(out)
