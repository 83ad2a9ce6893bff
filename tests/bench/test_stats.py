"""Percentiles and summaries on inputs whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from chatforge.bench.client import RequestResult
from chatforge.bench.stats import Distribution, level_ratios, percentile, summarize, summarize_prefix


def test_percentiles_of_one_to_ten():
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 5.5
    assert percentile(values, 90) == pytest.approx(9.1, abs=1e-12)
    assert percentile(values, 99) == pytest.approx(9.91, abs=1e-12)
    assert percentile(values, 100) == 10.0


def test_percentiles_of_a_single_value_and_two_values():
    assert percentile([0.25], 99) == 0.25
    assert percentile([1.0, 3.0], 50) == 2.0
    assert percentile([1.0, 3.0], 90) == pytest.approx(2.8, abs=1e-12)


def test_percentiles_match_numpy_linear_method():
    rng = np.random.default_rng(3)
    values = rng.exponential(size=37).tolist()
    for p in (1, 50, 90, 99, 99.9):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)), rel=1e-12)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_of_nothing_is_none():
    assert Distribution.of([]) is None
    assert Distribution.of([2.0, 4.0]) == Distribution(2, 3.0, 3.0, 3.8, 3.98)


def _result(ttft, e2e, tokens, itls=(), ok=True, error=None):
    return RequestResult(ok, 0.0, e2e, ttft=ttft, itls=list(itls), output_tokens=tokens, usage_reported=True, error=error)


def test_level_summary_counts_only_successful_requests():
    results = [
        _result(0.1, 1.1, 11, itls=[0.1] * 10),
        _result(0.3, 2.3, 21, itls=[0.1] * 20),
        _result(None, 0.01, 0, ok=False, error="HTTP 500: boom"),
    ]
    s = summarize("a", 2, results, duration_s=2.5)
    assert (s.requests, s.failed, s.output_tokens) == (3, 1, 32)
    assert s.request_throughput == 2 / 2.5
    assert s.output_throughput == 32 / 2.5
    assert s.ttft == Distribution(2, 0.2, 0.2, pytest.approx(0.28), pytest.approx(0.298))
    assert s.tpot.p50 == pytest.approx(0.1)  # (1.1-0.1)/10 and (2.3-0.3)/20
    assert s.itl.count == 30 and s.itl.p99 == pytest.approx(0.1)
    assert s.e2e.mean == pytest.approx(1.7)
    assert s.errors == ("HTTP 500: boom",)
    assert s.usage_reported


def test_tpot_needs_two_tokens():
    assert _result(0.1, 0.2, 1).tpot is None
    assert _result(0.1, 0.5, 3).tpot == pytest.approx(0.2)


def test_ratios_and_prefix_summary():
    fast = summarize("a", 1, [_result(0.1, 1.1, 11, itls=[0.1] * 10)], 1.0)
    slow = summarize("b", 1, [_result(0.4, 4.4, 11, itls=[0.4] * 10)], 4.0)
    r = level_ratios(fast, slow)
    assert r["output_throughput"] == pytest.approx(4.0)
    assert r["request_throughput"] == pytest.approx(4.0)
    assert r["ttft_p50"] == pytest.approx(0.25) and r["tpot_p50"] == pytest.approx(0.25)
    assert r["itl_p50"] == pytest.approx(0.25) and r["e2e_p50"] == pytest.approx(0.25)

    pairs = [(_result(1.0, 2.0, 4), _result(0.1, 1.1, 4)), (_result(3.0, 4.0, 4), _result(0.3, 1.3, 4)),
             (_result(None, 0.1, 0, ok=False), _result(0.1, 1.0, 4))]
    p = summarize_prefix("a", 1000, pairs)
    assert (p.pairs, p.failed) == (3, 1)
    assert p.cold_ttft.p50 == 2.0 and p.warm_ttft.p50 == pytest.approx(0.2)
    assert p.warm_over_cold == pytest.approx(0.1)
