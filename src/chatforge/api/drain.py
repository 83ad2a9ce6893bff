"""Graceful drain: the admission gate and the registry of requests in flight.

On SIGTERM or SIGINT the server (api/server.py) calls `Drain.run`: from then on every new request
is refused with 503 and `Retry-After` in its dialect's envelope (`refuse_new`, called by the
serving template) and `/health` answers 503 `draining`, so a load balancer stops sending; the
requests already admitted run to their end for up to the drain timeout; whatever still runs then
is cut: its engine work ends with finish reason `length`, so each client gets its stream's proper
last event (or a whole JSON answer) and each request its usage row. Only then does the server
close its sockets and the platform (usage rows written, the database closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from chatforge.errors import ChatforgeError

log = logging.getLogger("chatforge.api.drain")

# After the cut, how long the cut requests get to deliver their last events, and how often the
# cut is repeated meanwhile (a request whose engine work had not been queued yet missed it).
CUT_GRACE_S = 10.0
_RECUT_EVERY_S = 0.5


class DrainingError(ChatforgeError):
    """The server is shutting down: the client should retry, elsewhere or after the restart."""

    status = 503
    code = "server_shutting_down"

    def __init__(self, retry_after: int = 5):
        super().__init__("The server is shutting down; retry shortly.", headers={"Retry-After": str(retry_after)})


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._cuts: dict[str, Callable[[], None]] = {}  # request id -> ends its engine work now
        self._left = asyncio.Event()  # set whenever a request leaves

    def refuse_new(self) -> None:
        if self.draining:
            raise DrainingError()

    def enter(self, request_id: str, cut: Callable[[], None]) -> None:
        """An admitted request, and how to cut it short (idempotent)."""
        self._cuts[request_id] = cut

    def leave(self, request_id: str) -> None:
        self._cuts.pop(request_id, None)
        self._left.set()

    @property
    def in_flight(self) -> int:
        return len(self._cuts)

    async def run(self, timeout_s: float, cut_grace_s: float = CUT_GRACE_S) -> int:
        """Stop admitting, wait up to `timeout_s` for the requests in flight, then cut the rest
        and give them `cut_grace_s` to end. Returns how many were cut."""
        self.draining = True
        log.info("draining: %d requests in flight, up to %.1f s", self.in_flight, timeout_s)
        await self._until_empty(time.monotonic() + timeout_s)
        cut = self.in_flight
        if cut:
            log.warning("drain timeout: cutting %d requests short (finish reason length)", cut)
            deadline = time.monotonic() + cut_grace_s
            while self._cuts and time.monotonic() < deadline:
                for end in list(self._cuts.values()):
                    end()
                await self._until_empty(min(deadline, time.monotonic() + _RECUT_EVERY_S))
        if self._cuts:
            log.error("%d requests did not end after the cut; the server closes their connections", len(self._cuts))
        log.info("drained")
        return cut

    async def _until_empty(self, deadline: float) -> None:
        while self._cuts:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._left.clear()
            try:
                await asyncio.wait_for(self._left.wait(), remaining)
            except TimeoutError:
                return
