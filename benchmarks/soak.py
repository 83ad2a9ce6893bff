"""Soak: mixed traffic against one `chatforge serve` for a set time, watching for leaks.

Starts a server of its own (the bundled model, a SQLite database seeded with an account, a key,
a product and a deployment), or targets `--url`. Workers send, for the whole run, a seeded mix:
streams and whole answers on every dialect (OpenAI, DeepInfra's path, Infomaniak's legacy and
successor routes, EGP), n=2, stop strings, clients that go away mid-stream, and requests that
must be refused (bad JSON 400, unknown model 404, a wrong key 401, too many messages 400, a body
over the bound 413). Every `--sample-every` seconds it records, from `/metrics`: resident
memory, open file descriptors, KV blocks in use, asyncio tasks, running and waiting requests,
and, from its own clock, the interval's latency percentiles and answer counts.

The verdict compares the server idle after the warm-up (traffic paused, client connections
closed) with the server idle at the end: resident memory grown at most 5%, KV blocks 0, file
descriptors and asyncio tasks back where they were, and no answer that no scenario expects (no
5xx at all). Exit status 1 when it fails.

    .venv/bin/python benchmarks/soak.py --duration 1800 --json benchmarks/soak.json
    .venv/bin/python benchmarks/soak.py --duration 120 --warmup 30      # what CI runs (tests/api/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

MODEL = "smollm2"
MSG = [{"role": "user", "content": "Name three rivers in Europe."}]
# The soak server's bounds (limits.max_body_bytes, limits.max_messages): refusals cost little to provoke.
BODY_LIMIT = 64 * 1024
MESSAGES_LIMIT = 64


@dataclass
class Sample:
    t: float  # seconds since the traffic began
    rss_bytes: float
    open_fds: float
    kv_blocks_used: float
    asyncio_tasks: float
    running: float
    waiting: float
    answers: int = 0  # in the interval
    unexpected: int = 0
    p50_s: float | None = None
    p95_s: float | None = None


@dataclass
class Verdict:
    rss_growth: float  # (end - start) / start, idle to idle
    kv_blocks_left: float
    fds_delta: float
    tasks_delta: float
    unexpected: int
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.rss_growth <= 0.05 and self.kv_blocks_left == 0 and self.fds_delta <= 0
                and self.tasks_delta <= 0 and self.unexpected == 0)


# -- the traffic ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    weight: int
    expected: frozenset[int]


SCENARIOS = [
    Scenario("openai_stream", 6, frozenset({200})),
    Scenario("openai_n2_stop", 3, frozenset({200})),
    Scenario("deepinfra", 2, frozenset({200})),
    Scenario("legacy_stream", 3, frozenset({200})),
    Scenario("successor", 2, frozenset({200})),
    Scenario("egp_stream", 3, frozenset({200})),
    Scenario("egp", 2, frozenset({200})),
    Scenario("disconnect", 3, frozenset({200})),
    Scenario("bad_json", 1, frozenset({400})),
    Scenario("unknown_model", 1, frozenset({404})),
    Scenario("wrong_key", 1, frozenset({401})),
    Scenario("too_many_messages", 1, frozenset({400})),
    Scenario("too_large", 1, frozenset({413})),
]


def _request(name: str, key: str, rng: random.Random) -> tuple[str, dict, dict | bytes]:
    """(path, headers, json body or raw bytes) of one request of scenario `name`."""
    bearer, egp = {"Authorization": f"Bearer {key}"}, {"x-api-key": key}
    tokens = rng.randint(4, 16)
    chat = {"model": MODEL, "messages": MSG, "max_tokens": tokens}
    if name == "openai_stream":
        return "/v1/chat/completions", bearer, {**chat, "stream": True, "stream_options": {"include_usage": True}}
    if name == "openai_n2_stop":
        return "/v1/chat/completions", bearer, {**chat, "n": 2, "stop": ["\n", "."], "temperature": 0.8, "seed": rng.randint(0, 9)}
    if name == "deepinfra":
        return "/v1/openai/chat/completions", bearer, chat
    if name == "legacy_stream":
        return "/1/llm/1", bearer, {"messages": MSG, "max_new_tokens": tokens, "stream": True}
    if name == "successor":
        return "/1/ai/1/openai/chat/completions", bearer, chat
    if name in ("egp_stream", "egp"):
        return "/v4/models/d-soak/chat-completions", egp, {"chat_history": [], "prompt": MSG[0]["content"],
                                                          "max_tokens": tokens, "stream": name == "egp_stream"}
    if name == "disconnect":
        return "/v1/chat/completions", bearer, {**chat, "max_tokens": 64, "ignore_eos": True, "stream": True}
    if name == "bad_json":
        return "/v1/chat/completions", bearer, b'{"model": "smollm2", "messages": ['
    if name == "unknown_model":
        return "/v1/chat/completions", bearer, {**chat, "model": "no-such-model"}
    if name == "wrong_key":
        return "/v1/chat/completions", {"Authorization": "Bearer cf-ZZZZZZZZ_" + "Q" * 32}, chat
    if name == "too_many_messages":
        turns = [{"role": "user", "content": "hi"}] * (2 * MESSAGES_LIMIT)
        return "/v1/chat/completions", bearer, {**chat, "messages": turns}
    return "/v1/chat/completions", bearer, b" " * (BODY_LIMIT + 1)  # too_large


async def _one(client: httpx.AsyncClient, url: str, scenario: Scenario, key: str, rng: random.Random) -> int:
    path, headers, body = _request(scenario.name, key, rng)
    content = {"content": body, "headers": {**headers, "content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body, "headers": headers}
    streaming = isinstance(body, dict) and body.get("stream")
    if not streaming:
        return (await client.post(url + path, **content)).status_code
    async with client.stream("POST", url + path, **content) as response:
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data:")
            if scenario.name == "disconnect" and seen >= 2:
                break  # the client goes away mid-stream
        return response.status_code


class Traffic:
    def __init__(self, url: str, key: str, workers: int, seed: int):
        self.url, self.key, self.workers = url, key, workers
        self.rng = random.Random(seed)
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.unexpected = 0

    async def run_for(self, seconds: float) -> None:
        """Workers sending for `seconds`, on a client whose connections are closed afterwards."""
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=300) as client:
            await asyncio.gather(*(self._worker(client, deadline, random.Random(self.rng.random()))
                                   for _ in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, deadline: float, rng: random.Random) -> None:
        weights = [s.weight for s in SCENARIOS]
        while time.monotonic() < deadline:
            scenario = rng.choices(SCENARIOS, weights)[0]
            started = time.monotonic()
            try:
                status = await _one(client, self.url, scenario, self.key, rng)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.latencies.append(time.monotonic() - started)
            label = f"{scenario.name} {status}"
            self.statuses[label] = self.statuses.get(label, 0) + 1
            if status not in scenario.expected:
                self.unexpected += 1

    def take_interval(self) -> tuple[int, float | None, float | None]:
        lat, self.latencies = self.latencies, []
        if len(lat) < 2:
            return len(lat), (lat[0] if lat else None), (lat[0] if lat else None)
        q = statistics.quantiles(lat, n=20)
        return len(lat), statistics.median(lat), q[18]


# -- the server ----------------------------------------------------------------------------------

def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def sample(url: str, t: float) -> Sample:
    m = _metrics(url)
    return Sample(t, m["process_resident_memory_bytes"], m["process_open_fds"], m["chatforge_kv_cache_blocks_used"],
                  m["chatforge_asyncio_tasks"], m["chatforge_running_requests"], m["chatforge_waiting_requests"])


def wait_idle(url: str, settle_s: float, timeout_s: float = 120, baseline: Sample | None = None,
              release_s: float = 15) -> Sample:
    """The server with nothing running and every connection gone: sampled after `settle_s`, then,
    given the `baseline` of an earlier idle moment, again until its file descriptors and asyncio
    tasks are back to it or `release_s` passed (a connection the client closed last is let go
    by the server's keep-alive timer, 5 s; a leak stays past that)."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = sample(url, 0)
        if s.running == 0 and s.waiting == 0 and s.kv_blocks_used == 0:
            break
        if time.monotonic() > deadline:
            return s
        time.sleep(0.2)
    time.sleep(settle_s)  # the keep-alive timers of connections the client closed, the usage writer
    s, released_by = sample(url, 0), time.monotonic() + release_s
    while baseline is not None and (s.open_fds > baseline.open_fds or s.asyncio_tasks > baseline.asyncio_tasks):
        if time.monotonic() > released_by:
            break
        time.sleep(0.5)
        s = sample(url, 0)
    return s


async def seed(database_url: str) -> str:
    """An account, a key (returned), product 1 and deployment d-soak."""
    from chatforge.platform import accounts, keys
    from chatforge.platform.db import create_engine
    from chatforge.platform.migrations import upgrade

    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await accounts.create_account(conn, "soak")
            await accounts.create_product(conn, 1, "soak", [MODEL])
            await accounts.create_deployment(conn, "d-soak", "soak", MODEL)
            secret, _ = await keys.create_key(conn, ["soak"], name="soak")
    finally:
        await engine.dispose()
    return secret


@contextmanager
def spawned_server(folder: Path, port: int, threads: int):
    database_url = f"sqlite:///{folder / 'soak.db'}"
    key = asyncio.run(seed(database_url))
    env = {**os.environ, "CHATFORGE_ENGINE__MAX_NUM_SEQS": "16", "CHATFORGE_ENGINE__KV_CACHE_MB": "128",
           "CHATFORGE_LIMITS__MAX_BODY_BYTES": str(BODY_LIMIT), "CHATFORGE_LIMITS__MAX_MESSAGES": str(MESSAGES_LIMIT),
           "CHATFORGE_SERVER__KEEP_ALIVE_TIMEOUT_S": "1",
           "CHATFORGE_LOG_LEVEL": "warning"}
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "serve", "--port", str(port), "--threads",
                                str(threads), "--database-url", database_url],
                               stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chatforge serve exited: {(folder / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chatforge serve did not start")
            time.sleep(0.25)
        yield url, key
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# -- the run -------------------------------------------------------------------------------------

def run(url: str, key: str, duration_s: float, warmup_s: float, sample_every_s: float, workers: int,
        seed_: int = 1, progress=print) -> tuple[list[Sample], Verdict, Sample, Sample]:
    traffic = Traffic(url, key, workers, seed_)
    asyncio.run(traffic.run_for(warmup_s))
    before = wait_idle(url, settle_s=2.0)
    progress(f"warm-up done: idle rss {before.rss_bytes / 2**20:.1f} MiB, fds {before.open_fds:.0f}, "
             f"tasks {before.asyncio_tasks:.0f}")
    samples: list[Sample] = []
    started = time.monotonic()

    async def sampler(stop: asyncio.Event):
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), sample_every_s)
            except TimeoutError:
                pass
            s = await asyncio.to_thread(sample, url, time.monotonic() - started)
            s.answers, s.p50_s, s.p95_s = traffic.take_interval()
            s.unexpected = traffic.unexpected
            samples.append(s)
            progress(_line(s))

    async def main():
        stop = asyncio.Event()
        watcher = asyncio.create_task(sampler(stop))
        await traffic.run_for(duration_s)
        stop.set()
        await watcher

    asyncio.run(main())
    after = wait_idle(url, settle_s=2.0, baseline=before)
    verdict = Verdict(
        rss_growth=(after.rss_bytes - before.rss_bytes) / before.rss_bytes,
        kv_blocks_left=after.kv_blocks_used,
        fds_delta=after.open_fds - before.open_fds,
        tasks_delta=after.asyncio_tasks - before.asyncio_tasks,
        unexpected=traffic.unexpected,
        by_status=dict(sorted(traffic.statuses.items())),
    )
    return samples, verdict, before, after


def _line(s: Sample) -> str:
    p50 = f"{s.p50_s:.2f}" if s.p50_s is not None else "-"
    p95 = f"{s.p95_s:.2f}" if s.p95_s is not None else "-"
    return (f"t={s.t:7.1f}s rss={s.rss_bytes / 2**20:7.1f}MiB fds={s.open_fds:4.0f} kv={s.kv_blocks_used:4.0f} "
            f"tasks={s.asyncio_tasks:4.0f} run={s.running:3.0f} wait={s.waiting:3.0f} answers={s.answers:4d} "
            f"p50={p50}s p95={p95}s unexpected={s.unexpected}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds of traffic after the warm-up")
    parser.add_argument("--warmup", type=float, default=120, help="seconds of traffic before the baseline")
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--workers", type=int, default=6, help="concurrent clients")
    parser.add_argument("--threads", type=int, default=2, help="the spawned server's engine threads")
    parser.add_argument("--url", help="an existing chatforge server (then --key too)")
    parser.add_argument("--key", help="an API key of --url's, with product 1 and deployment d-soak")
    parser.add_argument("--json", type=Path, help="write the samples and the verdict here")
    args = parser.parse_args()

    def go(url: str, key: str) -> tuple:
        return run(url, key, args.duration, args.warmup, args.sample_every, args.workers)

    if args.url:
        samples, verdict, before, after = go(args.url, args.key)
    else:
        with tempfile.TemporaryDirectory(prefix="chatforge-soak-") as folder, \
                spawned_server(Path(folder), _free_port(), args.threads) as (url, key):
            samples, verdict, before, after = go(url, key)
    report = {"verdict": {**asdict(verdict), "ok": verdict.ok}, "idle_before": asdict(before),
              "idle_after": asdict(after), "samples": [asdict(s) for s in samples],
              "load": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["verdict"], indent=1))
    return 0 if verdict.ok else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
