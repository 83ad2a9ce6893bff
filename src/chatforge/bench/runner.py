"""Drives a benchmark: warm-up, the shared-prefix probe, then each concurrency level, on one
server or two taken alternately.

A level keeps exactly `concurrency` requests in flight: that many workers each send their next
request as soon as the previous one finishes, until the level's requests are used up. With two
servers, each level (and each prefix pair) runs on one server and then the other, the order
swapping from one level to the next, so slow drift of the machine does not favour either; the
servers are never loaded at the same time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from rich.progress import Progress

from chatforge.bench.client import Endpoint, RequestOptions, RequestResult, send
from chatforge.bench.errors import BenchError
from chatforge.bench.report import BenchReport
from chatforge.bench.stats import LevelSummary, PrefixSummary, summarize, summarize_prefix
from chatforge.bench.workload import RequestSpec, from_jsonl, prefix_pairs, synthetic


@dataclass(frozen=True)
class BenchConfig:
    concurrency: tuple[int, ...] = (1,)
    num_requests: int | None = None  # per level; None: 2 x concurrency, at least 8
    prompt_tokens: int = 32
    output_tokens: int = 128
    dataset: Path | None = None
    shared_prefix_tokens: int = 0  # > 0 adds the cold/warm prefix-cache probe
    prefix_pairs: int = 4
    options: RequestOptions = field(default_factory=RequestOptions)
    warmup: int = 1  # requests per server before measuring, not counted
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BenchError("concurrency levels must be positive integers")
        if self.num_requests is not None and self.num_requests < 0:
            raise BenchError("the request count must not be negative")
        if self.shared_prefix_tokens < 0 or self.prefix_pairs < 1:
            raise BenchError("the shared prefix needs a non-negative length and at least one pair")
        if self.warmup < 0 or self.timeout_s <= 0:
            raise BenchError("warm-up count must be >= 0 and the timeout > 0")

    def requests_at(self, concurrency: int) -> int:
        return self.num_requests if self.num_requests is not None else max(8, 2 * concurrency)

    def workload(self, level_index: int, concurrency: int) -> list[RequestSpec]:
        n = self.requests_at(concurrency)
        if self.dataset is not None:
            return from_jsonl(self.dataset, n, self.output_tokens)
        # A fresh seed per level: one level's prompts never warm the prefix cache for the next.
        return synthetic(n, self.prompt_tokens, self.output_tokens, seed=self.seed + 1 + level_index)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["dataset"] = str(self.dataset) if self.dataset else None
        d["concurrency"] = list(self.concurrency)
        return d


class Runner:
    def __init__(self, config: BenchConfig, endpoints: list[Endpoint], progress: Progress | None = None):
        if not 1 <= len(endpoints) <= 2:
            raise BenchError("a benchmark runs against one server, or two to compare")
        self.config = config
        self.endpoints = endpoints
        self.progress = progress

    async def run(self) -> BenchReport:
        cfg = self.config
        limits = httpx.Limits(max_connections=max(cfg.concurrency) + 4, max_keepalive_connections=max(cfg.concurrency) + 4)
        timeout = httpx.Timeout(cfg.timeout_s, connect=30)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            for ep in self.endpoints:
                await self._warm_up(client, ep)
            prefix = await self._prefix_probe(client) if cfg.shared_prefix_tokens else []
            levels: list[LevelSummary] = []
            for i, c in enumerate(cfg.concurrency):
                specs = cfg.workload(i, c)
                if not specs:
                    continue
                order = self.endpoints if i % 2 == 0 else self.endpoints[::-1]
                for ep in order:
                    results, duration = await self._level(client, ep, specs, c)
                    levels.append(summarize(ep.label, c, results, duration))
        levels.sort(key=lambda s: (s.concurrency, self._index(s.label)))
        return BenchReport(cfg.as_dict(), self.endpoints, levels, prefix)

    def _index(self, label: str) -> int:
        return [ep.label for ep in self.endpoints].index(label)

    async def _warm_up(self, client: httpx.AsyncClient, ep: Endpoint) -> None:
        specs = synthetic(self.config.warmup, self.config.prompt_tokens, min(self.config.output_tokens, 16), seed=-1)
        for spec in specs:
            r = await send(client, ep, spec, self.config.options)
            if not r.ok:
                raise BenchError(f"the warm-up request to {ep.label} ({ep.url}) failed: {r.error}")

    async def _level(self, client: httpx.AsyncClient, ep: Endpoint, specs: list[RequestSpec], concurrency: int):
        results: list[RequestResult] = []
        pending = iter(specs)
        task = self._task(f"{ep.label} @ {concurrency}", len(specs))

        async def worker() -> None:
            for spec in pending:  # a shared iterator: each worker takes the next unsent request
                results.append(await send(client, ep, spec, self.config.options))
                self._advance(task)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
        return results, time.perf_counter() - start

    async def _prefix_probe(self, client: httpx.AsyncClient) -> list[PrefixSummary]:
        cfg = self.config
        pairs = prefix_pairs(cfg.prefix_pairs, cfg.shared_prefix_tokens, cfg.prompt_tokens, cfg.output_tokens, seed=cfg.seed)
        timings: dict[str, list[tuple[RequestResult, RequestResult]]] = {ep.label: [] for ep in self.endpoints}
        task = self._task(f"prefix {cfg.shared_prefix_tokens} cold/warm", 2 * len(pairs) * len(self.endpoints))
        for i, (cold, warm) in enumerate(pairs):
            for ep in self.endpoints if i % 2 == 0 else self.endpoints[::-1]:
                first = await send(client, ep, cold, cfg.options)
                self._advance(task)
                second = await send(client, ep, warm, cfg.options)
                self._advance(task)
                timings[ep.label].append((first, second))
        return [summarize_prefix(ep.label, cfg.shared_prefix_tokens, timings[ep.label]) for ep in self.endpoints]

    def _task(self, description: str, total: int):
        return self.progress.add_task(description, total=total) if self.progress else None

    def _advance(self, task) -> None:
        if self.progress is not None:
            self.progress.advance(task)
