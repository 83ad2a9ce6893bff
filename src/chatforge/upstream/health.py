"""Which upstreams may take requests: probes that never generate, and cooldowns after
server-side errors only.

- A probe every `health_interval_s` reads the upstream's health route (a chatforge node's load:
  whether its engine runs and how many sequences wait). Two failed probes in a row take it out;
  one good probe brings it back (and ends a cooldown for being unreachable), so a restarted node
  is used again within two intervals, and one slow probe on a busy node does not evict it (SMG
  PR #9198's lesson).
- An upstream that cannot be reached, or drops a stream, is cooled down at once; other
  server-side errors cool it down after `allowed_fails` of them within `fail_window_s`
  (LiteLLM's semantics). A request's own faults (4xx) never count.

`Upstream` also keeps what /metrics reports of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field

from chatforge.settings import FleetConfig
from chatforge.upstream.client import ChatforgeNodeClient, OpenAICompletionsClient

log = logging.getLogger("chatforge.upstream")

UNHEALTHY_AFTER = 2  # failed probes in a row

# Seconds to the first output, for the latency histogram.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class UpstreamCounters:
    """Since start, for /metrics."""

    requests: dict[str, int] = field(default_factory=dict)  # outcome -> count
    failures: int = 0  # server-side errors (the request may have gone on elsewhere)
    retries: int = 0  # requests that went on to another upstream after this one failed
    cooldowns: int = 0
    affinity_hits: int = 0  # picked as the prompt's favourite
    affinity_misses: int = 0  # picked by load instead
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0

    def count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def observe_latency(self, seconds: float) -> None:
        self.latency_count += 1
        self.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1


class Upstream:
    """One upstream of one model, as this gateway sees it."""

    def __init__(self, client: ChatforgeNodeClient | OpenAICompletionsClient):
        self.client = client
        self.url = client.url
        self.kind = client.kind
        self.weight = client.entry.weight
        self.outstanding = 0  # requests this gateway has in flight there
        self.waiting = 0  # sequences queued there, as last reported (chatforge nodes)
        self.healthy = True  # until probes say otherwise
        self.detail = ""  # why it is unhealthy or cooling
        self.cooled_until = 0.0  # time.monotonic()
        self.cooled_unreachable = False  # the cooldown is for being unreachable: a good probe ends it
        self.failed_probes = 0
        self.last_probe: float | None = None
        self._fails: deque[float] = deque()
        self.counters = UpstreamCounters()

    @property
    def load(self) -> int:
        return self.outstanding + self.waiting

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.cooled_until

    def cooling(self, now: float) -> bool:
        return now < self.cooled_until


class HealthMonitor:
    def __init__(self, upstreams: list[Upstream], config: FleetConfig, model_id: str):
        self.upstreams = upstreams
        self.config = config
        self.model_id = model_id
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"chatforge-health-{self.model_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(u) for u in self.upstreams))

    async def _run(self) -> None:
        while True:  # open() made the first round
            await asyncio.sleep(self.config.health_interval_s)
            await self.probe_all()

    async def _probe(self, u: Upstream) -> None:
        probe = await u.client.probe()
        u.last_probe = time.time()
        if probe.healthy:
            u.waiting = probe.waiting
            u.failed_probes = 0
            back = not u.healthy or (u.cooled_unreachable and u.cooling(time.monotonic()))
            if back:
                log.warning("upstream %s of %s is back", u.url, self.model_id)
                u.cooled_until, u.detail = 0.0, ""
            u.healthy = True
            return
        u.failed_probes += 1
        if u.failed_probes >= UNHEALTHY_AFTER and u.healthy:
            log.error("upstream %s of %s is unhealthy: %s", u.url, self.model_id, probe.detail)
            u.healthy = False
        if not u.healthy:
            u.detail, u.waiting = probe.detail, 0

    def failed(self, u: Upstream, reason: str, unreachable: bool) -> None:
        """A server-side error of `u`: cool it down at once if it is unreachable, else after
        `allowed_fails` within the window."""
        now = time.monotonic()
        u.counters.failures += 1
        fails = u._fails
        fails.append(now)
        while fails and fails[0] < now - self.config.fail_window_s:
            fails.popleft()
        if (unreachable or len(fails) >= self.config.allowed_fails) and not u.cooling(now):
            u.cooled_until = now + self.config.cooldown_s
            u.cooled_unreachable = unreachable
            u.detail = reason
            u.counters.cooldowns += 1
            fails.clear()
            log.error("upstream %s of %s cooled down for %.1f s: %s", u.url, self.model_id, self.config.cooldown_s, reason)
