"""The gateway's upstreams in /metrics (prefix `chatforge_upstream_`, labels model and upstream
URL), read at scrape time from each remote engine's upstreams: requests by outcome, server-side
failures, retries elsewhere, cooldowns, affinity hits and misses, time to the first output, and
the state now (healthy, cooling, in flight, waiting)."""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from chatforge.service.catalog import ModelCatalog
from chatforge.upstream.health import LATENCY_BUCKETS
from chatforge.upstream.remote_engine import RemoteEngine

_LABELS = ["model", "upstream", "kind"]


class UpstreamCollector:
    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog

    def collect(self):
        engines = [m.engine for m in self.catalog.models if isinstance(m.engine, RemoteEngine)]
        if not engines:
            return
        requests = CounterMetricFamily("chatforge_upstream_requests", "Requests sent to an upstream, by how they ended there",
                                       labels=[*_LABELS, "outcome"])
        counters = {name: CounterMetricFamily(f"chatforge_upstream_{name}", text, labels=_LABELS) for name, text in (
            ("failures", "Server-side errors of an upstream (the request may have gone on elsewhere)"),
            ("retries", "Requests tried on another upstream after this one failed or was full"),
            ("cooldowns", "Times an upstream was cooled down"),
            ("affinity_hits", "Requests sent to their prompt's favourite upstream"),
            ("affinity_misses", "Requests sent elsewhere because the favourite was loaded"),
        )}
        latency = HistogramMetricFamily("chatforge_upstream_first_output_seconds",
                                        "From sending a request to an upstream to its first output", labels=_LABELS)
        gauges = {name: GaugeMetricFamily(f"chatforge_upstream_{name}", text, labels=_LABELS) for name, text in (
            ("healthy", "1 while the upstream passes its probes"),
            ("cooling", "1 while the upstream is cooled down after errors"),
            ("outstanding", "Requests this gateway has in flight on the upstream"),
            ("waiting", "Sequences the upstream reports waiting (chatforge nodes)"),
        )}
        now = time.monotonic()
        for engine in engines:
            for u in engine.upstreams:
                labels = [engine.model_id, u.url, u.kind]
                c = u.counters
                for outcome, count in c.requests.items():
                    requests.add_metric([*labels, outcome], count)
                for name in counters:
                    counters[name].add_metric(labels, getattr(c, name))
                cumulative, buckets = 0, []
                for bound, count in zip(LATENCY_BUCKETS, c.latency_buckets):
                    buckets.append((str(bound), count))
                cumulative = c.latency_count
                latency.add_metric(labels, [*buckets, ("+Inf", cumulative)], c.latency_sum)
                gauges["healthy"].add_metric(labels, 1 if u.healthy else 0)
                gauges["cooling"].add_metric(labels, 1 if u.cooling(now) else 0)
                gauges["outstanding"].add_metric(labels, u.outstanding)
                gauges["waiting"].add_metric(labels, u.waiting)
        yield requests
        yield from counters.values()
        yield latency
        yield from gauges.values()
