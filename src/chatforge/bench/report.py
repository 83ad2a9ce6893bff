"""What a benchmark run found, as a dict for `--json` and as rich tables for the terminal.

With two servers, `comparisons` holds a ÷ b for every level both ran (a is the server given as
URL, b the one given with --compare): above 1 means a is faster in throughputs and slower in
latencies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from chatforge.bench.client import Endpoint
from chatforge.bench.stats import Distribution, LevelSummary, PrefixSummary, level_ratios

LATENCIES = ("ttft", "itl", "tpot", "e2e")


@dataclass
class BenchReport:
    config: dict
    endpoints: list[Endpoint]
    levels: list[LevelSummary]
    prefix: list[PrefixSummary]
    machine: dict | None = None

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.levels) + sum(p.failed for p in self.prefix)

    def comparisons(self) -> list[dict]:
        if len(self.endpoints) != 2:
            return []
        a, b = (ep.label for ep in self.endpoints)
        out = []
        for c in sorted({s.concurrency for s in self.levels}):
            by_label = {s.label: s for s in self.levels if s.concurrency == c}
            if a in by_label and b in by_label:
                out.append({"concurrency": c, "a": a, "b": b, **level_ratios(by_label[a], by_label[b])})
        return out

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "machine": self.machine,
            "servers": [{"label": ep.label, "url": ep.url, "model": ep.model, "json_schema": ep.json_schema}
                        for ep in self.endpoints],
            "levels": [asdict(s) for s in self.levels],
            "prefix": [{**asdict(p), "warm_over_cold": p.warm_over_cold} for p in self.prefix],
            "comparisons": self.comparisons(),
        }


def _ms(d: Distribution | None, field: str) -> str:
    return f"{getattr(d, field) * 1000:.1f}" if d else "-"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def render(report: BenchReport, console: Console) -> None:
    throughput = Table(title="Throughput")
    for name in ("server", "conc", "ok/sent", "req/s", "out tok/s", "out tokens"):
        throughput.add_column(name, justify="left" if name == "server" else "right")
    latency = Table(title="Latency in ms")
    for name in ("server", "conc", "metric", "mean", "p50", "p90", "p99"):
        latency.add_column(name, justify="left" if name in ("server", "metric") else "right")
    for s in report.levels:
        star = "" if s.usage_reported else "*"
        throughput.add_row(s.label, str(s.concurrency), f"{s.requests - s.failed}/{s.requests}",
                           f"{s.request_throughput:.2f}", f"{s.output_throughput:.1f}{star}", f"{s.output_tokens}{star}")
        for i, lat in enumerate(LATENCIES):
            d = getattr(s, lat)
            latency.add_row(s.label if i == 0 else "", str(s.concurrency) if i == 0 else "", lat,
                            *(_ms(d, f) for f in ("mean", "p50", "p90", "p99")), end_section=i == len(LATENCIES) - 1)
    if report.levels:  # none when only the prefix probe ran
        console.print(throughput)
        if any(not s.usage_reported for s in report.levels if s.requests > s.failed):
            console.print("* no usage chunk from this server: output tokens counted as content chunks")
        console.print(latency)

    if report.prefix:
        prefix = Table(title=f"TTFT in ms, shared {report.prefix[0].prefix_tokens}-token prefix")
        for name in ("server", "pairs ok", "cold p50", "warm p50", "warm/cold"):
            prefix.add_column(name, justify="right" if name != "server" else "left")
        for p in report.prefix:
            prefix.add_row(p.label, f"{p.pairs - p.failed}/{p.pairs}", _ms(p.cold_ttft, "p50"),
                           _ms(p.warm_ttft, "p50"), _x(p.warm_over_cold))
        console.print(prefix)

    comparisons = report.comparisons()
    if comparisons:
        a, b = comparisons[0]["a"], comparisons[0]["b"]
        ratios = Table(title=f"Ratios {a} ÷ {b} (throughput: higher favours {a}; latency: lower favours {a})")
        for name in ("conc", "out tok/s", "req/s", "ttft p50", "itl p50", "tpot p50", "e2e p50"):
            ratios.add_column(name, justify="right")
        for r in comparisons:
            ratios.add_row(str(r["concurrency"]), *(_x(r[k]) for k in (
                "output_throughput", "request_throughput", "ttft_p50", "itl_p50", "tpot_p50", "e2e_p50")))
        console.print(ratios)

    for s in report.levels:
        for err in s.errors:
            console.print(f"[red]{s.label} @ {s.concurrency}: {err}[/red]")
