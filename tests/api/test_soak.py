"""The soak benchmark's CI version (benchmarks/soak.py, which runs 30 minutes as a benchmark):
two minutes of mixed traffic on every dialect (streams, n=2, stop strings, clients that go away,
refusals) against a real `chatforge serve`, with the same verdict: idle to idle, resident memory
grows at most 5%, no KV block, file descriptor or asyncio task is left behind, and no answer
is one its scenario does not expect."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .platform_fixtures import free_port

_spec = importlib.util.spec_from_file_location("chatforge_soak", Path(__file__).parents[2] / "benchmarks" / "soak.py")
soak = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(soak)


def test_two_minutes_of_mixed_traffic_leak_nothing(tmp_path):
    lines = []
    with soak.spawned_server(tmp_path, free_port(), threads=1) as (url, key):
        samples, verdict, before, after = soak.run(url, key, duration_s=75, warmup_s=25, sample_every_s=15,
                                                   workers=4, progress=lines.append)
    report = "\n".join(lines) + f"\n{verdict}"
    assert {label.split()[0] for label in verdict.by_status} == {s.name for s in soak.SCENARIOS}, report
    assert verdict.unexpected == 0, report
    assert verdict.kv_blocks_left == 0, report
    assert verdict.fds_delta <= 0 and verdict.tasks_delta <= 0, report
    assert verdict.rss_growth <= 0.05, report
    assert samples and sum(s.answers for s in samples) > 0, report
