"""The one quantile rule (chatforge/quantiles.py) that the usage API and the benchmark share."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import chatforge
from chatforge.quantiles import quantile


def test_quantiles_interpolate_between_ranks():
    assert quantile([1.0], 0.99) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([0.0, 10.0], 0.9) == 9.0
    assert quantile([1.0, 2.0, 3.0], 0) == 1.0 and quantile([1.0, 2.0, 3.0], 1) == 3.0


def test_quantiles_match_numpy_and_refuse_what_has_none():
    values = sorted(np.random.default_rng(5).exponential(size=23).tolist())
    for q in (0.01, 0.5, 0.9, 0.99):
        assert quantile(values, q) == pytest.approx(float(np.percentile(values, q * 100)), abs=1e-12)
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)
    with pytest.raises(ValueError, match="outside"):
        quantile([1.0], 1.5)


def test_the_platform_and_the_benchmark_share_one_rule():
    package = Path(chatforge.__file__).parent

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    # a leaf: either side may import it without reaching into the other
    assert not {m for m in imported(package / "quantiles.py") if m.startswith("chatforge")}
    for user in ("platform/reports.py", "bench/stats.py"):
        text = (package / user).read_text()
        assert "chatforge.quantiles" in imported(package / user) and "math.floor" not in text, user
