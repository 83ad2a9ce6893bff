"""Figures from request timings: percentiles, one concurrency level's summary, the cold-vs-warm
prefix-cache summary, and the ratios between two servers.

Percentiles interpolate linearly between the two nearest ranks (numpy's default "linear" method,
also what vLLM's benchmark reports): with n sorted values, p sits at rank p/100 * (n - 1); the
rule is chatforge/quantiles.py's, which the usage API's latency percentiles share.
Latencies are kept in seconds here and shown in milliseconds by the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from chatforge.bench.client import RequestResult
from chatforge.quantiles import quantile

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0 <= p <= 100) of values in any order."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside [0, 100]")
    if not values:
        raise ValueError("percentile of no values")
    return quantile(sorted(values), p / 100)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency, in seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution | None:
        if not values:
            return None
        p50, p90, p99 = (percentile(values, p) for p in PERCENTILES)
        return cls(len(values), sum(values) / len(values), p50, p90, p99)


@dataclass(frozen=True)
class LevelSummary:
    """One server at one concurrency level. Throughputs are over the level's wall time, from the
    first request sent to the last one finished, and count successful requests only."""

    label: str
    concurrency: int
    requests: int
    failed: int
    duration_s: float
    request_throughput: float  # requests/s
    output_throughput: float  # output tokens/s
    output_tokens: int
    usage_reported: bool  # False: output tokens were counted as content chunks
    ttft: Distribution | None
    itl: Distribution | None
    tpot: Distribution | None
    e2e: Distribution | None
    errors: tuple[str, ...] = ()  # the most frequent distinct failure messages


def summarize(label: str, concurrency: int, results: Sequence[RequestResult], duration_s: float) -> LevelSummary:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    errors = Counter(r.error for r in results if not r.ok and r.error)
    return LevelSummary(
        label=label,
        concurrency=concurrency,
        requests=len(results),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        request_throughput=len(ok) / duration_s if duration_s > 0 else 0.0,
        output_throughput=tokens / duration_s if duration_s > 0 else 0.0,
        output_tokens=tokens,
        usage_reported=bool(ok) and all(r.usage_reported for r in ok),
        ttft=Distribution.of([r.ttft for r in ok if r.ttft is not None]),
        itl=Distribution.of([gap for r in ok for gap in r.itls]),
        tpot=Distribution.of([r.tpot for r in ok if r.tpot is not None]),
        e2e=Distribution.of([r.e2e for r in ok]),
        errors=tuple(msg for msg, _ in errors.most_common(3)),
    )


@dataclass(frozen=True)
class PrefixSummary:
    """The shared-prefix scenario on one server: TTFT of requests whose long system prompt the
    server saw for the first time (cold) and right after (warm)."""

    label: str
    prefix_tokens: int
    pairs: int
    failed: int
    cold_ttft: Distribution | None
    warm_ttft: Distribution | None

    @property
    def warm_over_cold(self) -> float | None:
        """Median warm TTFT / median cold TTFT: well below 1 when the server caches prefixes."""
        if self.cold_ttft is None or self.warm_ttft is None or self.cold_ttft.p50 == 0:
            return None
        return self.warm_ttft.p50 / self.cold_ttft.p50


def summarize_prefix(label: str, prefix_tokens: int, pairs: Sequence[tuple[RequestResult, RequestResult]]) -> PrefixSummary:
    both_ok = [(c, w) for c, w in pairs if c.ok and w.ok and c.ttft is not None and w.ttft is not None]
    return PrefixSummary(
        label=label,
        prefix_tokens=prefix_tokens,
        pairs=len(pairs),
        failed=len(pairs) - len(both_ok),
        cold_ttft=Distribution.of([c.ttft for c, _ in both_ok]),
        warm_ttft=Distribution.of([w.ttft for _, w in both_ok]),
    )


def _quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def level_ratios(a: LevelSummary, b: LevelSummary) -> dict[str, float | None]:
    """a ÷ b for each headline figure: above 1 is better for a in throughputs, worse in latencies."""
    def p50(d: Distribution | None) -> float | None:
        return d.p50 if d else None

    return {
        "output_throughput": _quotient(a.output_throughput, b.output_throughput),
        "request_throughput": _quotient(a.request_throughput, b.request_throughput),
        "ttft_p50": _quotient(p50(a.ttft), p50(b.ttft)),
        "itl_p50": _quotient(p50(a.itl), p50(b.itl)),
        "tpot_p50": _quotient(p50(a.tpot), p50(b.tpot)),
        "e2e_p50": _quotient(p50(a.e2e), p50(b.e2e)),
    }
