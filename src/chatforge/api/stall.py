"""How long a stream's current `send` has waited, watched by one timer per stream.

A reader who takes nothing fills the connection's write buffer, and then the server's `send`
waits (api/sse.py). A deadline per send (`asyncio.timeout`) would schedule and cancel a timer for
every chunk, one per token; instead each send only notes when it began and ended, and one timer
per stream wakes once per stall timeout to look. When the send under way has waited the whole
timeout, the stream's task is cancelled, and the send's caller tells that cancellation from any
other by `fired` (it then calls `uncancel`, as asyncio.timeout does).
"""

from __future__ import annotations

import asyncio

# A timer may run this much before its time (the loop's clock resolution): not yet a stall.
_EARLY_S = 0.002


class StallWatch:
    def __init__(self, task: asyncio.Task, timeout_s: float):
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._timeout_s = timeout_s
        self.since: float | None = None  # loop.time() when the send under way began; None between sends
        self.fired = False  # the task was cancelled for a stalled send
        self._cancelling = 0  # the task's pending cancellations before the watch's own
        self._timer = self._loop.call_later(timeout_s, self._look)

    def begin(self) -> None:
        self.since = self._loop.time()

    def end(self) -> None:
        self.since = None

    def uncancel(self) -> bool:
        """After a CancelledError in a send: True when the watch caused it (and it is withdrawn),
        False when it came from elsewhere (a client that went away, a shutdown) and must go on."""
        if not self.fired:
            return False
        self.fired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._timer.cancel()

    def _look(self) -> None:
        since, now = self.since, self._loop.time()
        if since is not None and now >= since + self._timeout_s - _EARLY_S:
            self.fired = True
            self._cancelling = self._task.cancelling()
            self._task.cancel()
            return
        self._timer = self._loop.call_at((now if since is None else since) + self._timeout_s, self._look)
