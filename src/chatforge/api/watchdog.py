"""The engine watchdog: a step that runs past `server.engine_step_timeout_s` marks its engine
unhealthy (`/health` 503 with the model in `stalled_engines`, `chatforge_engine_stalled` 1) until
steps complete again.

It reads only the engine's public surface: `AsyncEngine.stats()` returns a snapshot that the
engine thread replaces after every step, so while the engine holds work (sequences running or
waiting) a snapshot that stays the same object for longer than the limit is a step that has
not ended. A dead loop is `is_running`'s business (ops.py), not the watchdog's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from chatforge.service.catalog import ModelCatalog

log = logging.getLogger("chatforge.engine.watchdog")


class _Watch:
    def __init__(self, stats) -> None:
        self.stats = stats
        self.since = time.monotonic()  # when this snapshot was first seen


class EngineWatchdog:
    def __init__(self, catalog: ModelCatalog, step_timeout_s: float) -> None:
        self.catalog = catalog
        self.step_timeout_s = step_timeout_s
        self.interval_s = min(1.0, max(0.01, step_timeout_s / 4))
        self.stalled: set[str] = set()  # model ids whose current step is past the limit
        self.stalls = 0  # times a step went past the limit, since start
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="chatforge-engine-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check(self) -> None:
        """One look at every engine (what the background task does every `interval_s`)."""
        now = time.monotonic()
        for model in self.catalog.models:
            stats = model.engine.stats()
            watch = self._watches.get(model.model_id)
            if watch is None or watch.stats is not stats or stats.running + stats.waiting == 0:
                self._watches[model.model_id] = _Watch(stats)
                if model.model_id in self.stalled:
                    self.stalled.discard(model.model_id)
                    log.warning("engine of %s is stepping again", model.model_id)
            elif now - watch.since > self.step_timeout_s and model.model_id not in self.stalled:
                self.stalled.add(model.model_id)
                self.stalls += 1
                log.error("engine of %s: a step has run for more than %.1f s; reporting unhealthy",
                          model.model_id, self.step_timeout_s)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()
