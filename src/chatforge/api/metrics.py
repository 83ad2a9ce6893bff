"""Prometheus metrics (prefix `chatforge_`), one registry per app so tests can run several apps.

Request-level series are observed by the API layer when a request ends; engine gauges and
counters are read from each model's engine at scrape time, as are the platform's (storage up,
usage rows buffered and dropped), the watchdog's, and the process's own (resident memory, open
file descriptors, asyncio tasks: what a soak watches for leaks).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chatforge.platform.metering import UsageStatus
from chatforge.service.catalog import ModelCatalog
from chatforge.service.errors import ConstraintFailedError

if TYPE_CHECKING:
    from chatforge.api.serving import RequestOutcome

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    def __init__(self, catalog: ModelCatalog):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("chatforge_requests", "Requests by dialect, model and status", ["dialect", "model", "status"], registry=r)
        self.ttft = Histogram("chatforge_time_to_first_token_seconds", "Time to first token", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("chatforge_time_per_output_token_seconds", "Time per output token after the first", ["model"], buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("chatforge_e2e_request_latency_seconds", "End-to-end request latency", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("chatforge_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("chatforge_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.rate_limited = Counter("chatforge_rate_limited_requests", "Requests refused by a rate limit", ["dialect"], registry=r)
        self.constrained = Counter("chatforge_constrained_requests", "Admitted requests decoded under a grammar, by what it enforces (tools, json_schema, json_object, regex, choice, grammar)", ["model", "kind"], registry=r)
        self.grammar_errors = Counter("chatforge_grammar_errors", "Requests ended because their grammar refused the model's token", ["model"], registry=r)
        self.stalled_streams = Counter("chatforge_stalled_streams", "Streams aborted because their reader stopped reading", ["dialect"], registry=r)
        r.register(_EngineCollector(catalog))
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        self._operations = _OperationsCollector()
        r.register(self._operations)

    def watch(self, platform=None, watchdog=None) -> None:
        """Also report the platform's stores and usage buffer, and the engine watchdog."""
        self._operations.platform = platform
        self._operations.watchdog = watchdog

    def observe(self, dialect: str, model: str, outcome: RequestOutcome) -> None:
        usage = outcome.usage
        self.requests.labels(dialect, model, outcome.metric_status).inc()
        self.prompt_tokens.labels(model).inc(usage.prompt_tokens)
        self.generation_tokens.labels(model).inc(usage.completion_tokens)
        completed = outcome.status is UsageStatus.COMPLETED
        if completed:
            self.e2e.labels(model).observe(outcome.ended - outcome.started)
        if outcome.first_token is not None:
            self.ttft.labels(model).observe(outcome.first_token - outcome.started)
            if completed and usage.completion_tokens > 1:
                self.tpot.labels(model).observe((outcome.ended - outcome.first_token) / (usage.completion_tokens - 1))

    def observe_constrained(self, model: str, kind: str | None, error: BaseException | None) -> None:
        if kind is not None:
            self.constrained.labels(model, kind).inc()
        if isinstance(error, ConstraintFailedError):
            self.grammar_errors.labels(model).inc()

    def observe_refused(self, dialect: str, model: str, status: str) -> None:
        self.requests.labels(dialect, model, status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Engine state read at scrape time, summed over the served models."""

    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog

    def collect(self):
        stats = [m.engine.stats() for m in self.catalog.models]
        used = sum(s.num_blocks_used for s in stats)
        total = sum(s.num_blocks_total for s in stats) or 1
        yield GaugeMetricFamily("chatforge_running_requests", "Requests running on the engine", value=sum(s.running for s in stats))
        yield GaugeMetricFamily("chatforge_waiting_requests", "Requests waiting for the engine", value=sum(s.waiting for s in stats))
        yield GaugeMetricFamily("chatforge_kv_cache_usage_ratio", "Share of KV blocks held (0 when none)", value=used / total)
        yield GaugeMetricFamily("chatforge_kv_cache_blocks_used", "KV blocks held by sequences", value=used)
        yield CounterMetricFamily("chatforge_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache", value=sum(s.prefix_cache_hit_tokens for s in stats))
        yield CounterMetricFamily("chatforge_preemptions", "Sequences preempted for lack of KV blocks", value=sum(s.preemptions for s in stats))
        yield CounterMetricFamily("chatforge_aborted_requests", "Requests aborted (client gone, shutdown)", value=sum(s.aborts for s in stats))


class _OperationsCollector:
    """The platform's stores and usage buffer, the engine watchdog, the event loop's tasks."""

    def __init__(self):
        self.platform = None
        self.watchdog = None

    def collect(self):
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the server's event loop
            tasks = 0
        yield GaugeMetricFamily("chatforge_asyncio_tasks", "asyncio tasks alive in the server's event loop", value=tasks)
        if self.platform is not None:
            p = self.platform
            up = GaugeMetricFamily("chatforge_storage_up", "Whether a store answered its last call", labels=["store"])
            up.add_metric(["database"], 1 if p.database_health.up else 0)
            if p.redis_url:
                up.add_metric(["redis"], 1 if p.redis_health.up else 0)
            yield up
            if p.usage is not None:
                yield GaugeMetricFamily("chatforge_usage_rows_buffered", "Usage rows waiting to be written", value=p.usage.pending)
                yield CounterMetricFamily("chatforge_usage_rows_dropped", "Usage rows lost (buffer full, refused, or shutdown)", value=p.usage.dropped)
        if self.watchdog is not None:
            w = self.watchdog
            stalled = GaugeMetricFamily("chatforge_engine_stalled", "1 while an engine step runs past the watchdog's limit", labels=["model"])
            for model in w.catalog.models:
                stalled.add_metric([model.model_id], 1 if model.model_id in w.stalled else 0)
            yield stalled
            yield CounterMetricFamily("chatforge_engine_stalls", "Engine steps that ran past the watchdog's limit", value=w.stalls)
