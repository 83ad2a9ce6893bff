"""One quantile rule for every figure chatforge reports: the usage API's latency percentiles
(platform/reports.py, on SQLite; PostgreSQL's `percentile_cont` computes the same) and the
benchmark's (bench/stats.py). Linear interpolation between the two nearest ranks: numpy's
default "linear" method, PostgreSQL's `percentile_cont`, what vLLM's benchmark reports.

A leaf module (it imports nothing of chatforge), so that the platform and the benchmark client
share it without either reaching into the other."""

from __future__ import annotations

import math
from collections.abc import Sequence


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of values sorted ascending, interpolated between the ranks
    around (n - 1) * q."""
    if not ordered:
        raise ValueError("quantile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} outside [0, 1]")
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
