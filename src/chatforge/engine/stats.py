"""A snapshot of the engine's counters, for /metrics and /health."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    running: int  # sequences holding KV blocks (a request with n completions counts n)
    waiting: int  # sequences queued, new or preempted
    kv_usage: float  # fraction of blocks held by sequences; exactly 0.0 when none is
    num_blocks_total: int
    num_blocks_used: int  # referenced by a sequence; free cached blocks do not count
    prefix_cache_hit_tokens: int  # prompt tokens served from the prefix cache, since start
    prefix_cache_queried_tokens: int  # prompt tokens looked up in it, since start
    preemptions: int
    aborts: int  # requests aborted (client gone, shutdown); stop strings are not aborts
    prompt_tokens_total: int  # of requests added
    generated_tokens_total: int

