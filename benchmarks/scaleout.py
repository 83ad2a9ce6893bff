"""Scale-out: does throughput grow with nodes behind chatforge gateways, and what does the gateway
add to a request's latency? (Issue 19's goals: aggregate throughput with N nodes >= 0.9 x N x the
one-node figure, for N = 2 and 4; the gateway adds <= 3 ms p50 and <= 10 ms p99 on a quiet machine.)

The nodes are fake (tests/upstream/fake_node.py, in a process of their own): they sleep per token
instead of computing, so N of them really are N times the capacity of one even on 2 cores, and
every figure measures the gateways alone.

1. Throughput: `--gateways` (2) `chatforge serve --gateway` processes in front of 1, 2 and 4 fake
   chatforge nodes, each node 8 slots at `--token-delay` (20 ms) per token. A closed-loop client
   keeps 2 x capacity requests in flight, spread over the gateways: non-streamed chat requests
   for 64 tokens, each prompt different (so the prefix hash spreads them). Output tokens/s over
   `--seconds` after a warm-up, and each node's share of the requests.
The gateways run as a fleet's do: keys and usage in a PostgreSQL, limits in a Redis (both started
here, as the tests start them), each request with an API key that has a limit.

2. Added latency: one gateway in front of one fake node that answers at once (8 tokens, no
   delay). Requests alternate between the node's own OpenAI chat route (the baseline: the same
   tokens, no gateway) and the gateway's, sequentially (`--requests` each) and then 8 at a time;
   the gateway's added latency is the difference of the two paths' end-to-end percentiles.

    .venv/bin/python benchmarks/scaleout.py [--quick] [--write]

`--write` puts the RESULTS section into benchmarks/RESULTS.md (replacing the previous one);
without it the section is printed. A loaded machine distorts every figure: the load average is
recorded before and after, and the section says when the run must be repeated on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from servers import free_port  # a sibling module (this file runs as a script)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAKE_NODE = ROOT / "tests" / "upstream" / "fake_node.py"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the gateways' tokenizer and template (no weights)
SECTION = "## Scale-out: gateways in front of nodes"
QUIET_LOAD = 1.0  # 1-minute load average below which the machine counts as quiet (2 cores)


class Processes:
    """Child processes, stopped in reverse order on exit."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                                 env={**os.environ, **(env or {})})
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen) -> None:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


def wait_up(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout_s} s")


def start_fake_nodes(procs: Processes, name: str, count: int, token_delay: float, slots: int) -> list[str]:
    ports = [free_port() for _ in range(count)]
    procs.start(name, [sys.executable, str(FAKE_NODE), "--ports", *map(str, ports), "--model", MODEL,
                       "--token-delay", str(token_delay), "--slots", str(slots)])
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    for url in urls:
        wait_up(url + "/health")
    return urls


class Stores:
    """A PostgreSQL and a Redis of the run's own, on free loopback ports (the tests' recipe:
    tests/platform/conftest.py), so the gateways run as a fleet does: keys and usage in
    PostgreSQL, limits in Redis."""

    def __init__(self):
        spec = importlib.util.spec_from_file_location("chatforge_test_servers", ROOT / "tests" / "platform" / "conftest.py")
        self._servers = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
        spec.loader.exec_module(self._servers)

    def __enter__(self) -> Stores:
        s = self._servers
        self.folder = Path(tempfile.mkdtemp(prefix="chatforge-scaleout-stores-"))
        self.pg_bin, self.data, port = s._postgres_bin(), self.folder / "pg", free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        s._as_postgres_user([str(self.pg_bin / "initdb"), "-D", str(self.data), "-U", "chatforge", "--auth=trust", "--no-sync"])
        options = f"-p {port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        s._as_postgres_user([str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                             str(self.folder / "pg.log"), "-w", "start"])
        self.postgres = s.PostgresServer(port=port, bin=self.pg_bin)
        redis_port = free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        return self

    def __exit__(self, *exc) -> None:
        self.redis.terminate()
        self.redis.wait(timeout=10)
        self._servers._as_postgres_user([str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)

    def database_with_key(self) -> tuple[str, str]:
        """A new database and an API key in it with a limit (so every request is admitted by
        Redis's script and settled): the gateways run as in production, not in open mode."""
        from chatforge.platform import accounts, keys
        from chatforge.platform.db import create_engine
        from chatforge.platform.migrations import upgrade

        database_url = self.postgres.create_database()

        async def work() -> str:
            await upgrade(database_url)
            engine = create_engine(database_url)
            try:
                async with engine.begin() as conn:
                    await accounts.create_account(conn, "bench")
                    secret, _ = await keys.create_key(conn, ["bench"], rpm=1_000_000)
                    return secret
            finally:
                await engine.dispose()

        return database_url, asyncio.run(work())


def start_gateway(procs: Processes, name: str, upstreams: list[str], stores: Stores, database_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "chatforge.cli", "serve", "--gateway", "--host", "127.0.0.1", "--port", str(port),
               "--model", "smollm2", "--database-url", database_url, "--redis-url", stores.redis_url]
    for url in upstreams:
        command += ["--upstream", url]
    child = procs.start(name, command)
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/health")
    return child, url


def chat(content: str, max_tokens: int) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


# -- 1. throughput ------------------------------------------------------------------------------


async def closed_loop(gateways: list[str], key: str, concurrency: int, seconds: float, warmup: float, max_tokens: int) -> dict:
    tokens, requests, failures = 0, 0, 0
    start = time.monotonic()
    window = (start + warmup, start + warmup + seconds)
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient, w: int) -> None:
        nonlocal tokens, requests, failures
        while time.monotonic() < window[1]:
            i = next(counter)
            r = await client.post(gateways[i % len(gateways)] + "/v1/chat/completions",
                                  json=chat(f"Request {i} from worker {w}: tell a story.", max_tokens))
            ended = time.monotonic()
            if r.status_code != 200:
                failures += 1
                continue
            if window[0] <= ended <= window[1]:
                tokens += r.json()["usage"]["completion_tokens"]
                requests += 1

    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers={"Authorization": f"Bearer {key}"}) as client:
        await asyncio.gather(*(worker(client, w) for w in range(concurrency)))
    return {"tokens_per_s": tokens / seconds, "requests": requests, "failures": failures}


def throughput(procs: Processes, stores: Stores, args) -> list[dict]:
    fakes = start_fake_nodes(procs, "throughput-nodes", 4, args.token_delay, args.slots)
    database_url, key = stores.database_with_key()
    results = []
    for n in (1, 2, 4):
        before = [httpx.get(u + "/internal/v1/load").json()["served"] for u in fakes[:n]]
        gateways = [start_gateway(procs, f"gateway{g}-n{n}", fakes[:n], stores, database_url) for g in range(args.gateways)]
        concurrency = 2 * args.slots * n
        run = asyncio.run(closed_loop([url for _, url in gateways], key, concurrency, args.seconds, args.warmup, args.max_tokens))
        served = [httpx.get(u + "/internal/v1/load").json()["served"] - b for u, b in zip(fakes[:n], before)]
        for child, _ in gateways:
            procs.stop(child)
        # tokens/s if the gateway cost nothing: a slot yields max_tokens per (max_tokens - 1) delays
        ideal = n * args.slots * args.max_tokens / ((args.max_tokens - 1) * args.token_delay)
        results.append({"nodes": n, "concurrency": concurrency, "ideal_tokens_per_s": ideal,
                        "shares": [s / max(1, sum(served)) for s in served], **run})
        print(f"  {n} node(s): {run['tokens_per_s']:.0f} tok/s ({run['requests']} requests, {run['failures']} failed), "
              f"shares {[round(s, 2) for s in results[-1]['shares']]}", file=sys.stderr)
    return results


# -- 2. added latency ---------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def alternate(paths: dict[str, tuple[str, dict]], key: str, requests: int, concurrency: int) -> dict[str, list[float]]:
    """Each worker alternates the paths request by request; seconds per request by path."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    per_worker = max(1, requests // concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(per_worker):
            for name, (url, body) in paths.items():
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                elapsed = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {r.status_code}: {r.text[:200]}")
                times[name].append(elapsed)

    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        for name, (url, body) in paths.items():  # warm connections and caches
            for _ in range(20):
                await client.post(url, json=body)
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(procs: Processes, stores: Stores, args) -> list[dict]:
    (node,) = start_fake_nodes(procs, "latency-node", 1, 0.0, 64)
    database_url, key = stores.database_with_key()
    child, gateway = start_gateway(procs, "gateway-latency", [node], stores, database_url)
    body = chat("What is the capital of France?", 8)
    paths = {"direct": (node + "/v1/chat/completions", body), "gateway": (gateway + "/v1/chat/completions", body)}
    rows = []
    for concurrency in (1, 8):
        cpu_before = cpu_seconds(child.pid)
        times = asyncio.run(alternate(paths, key, args.requests, concurrency))
        row = {"concurrency": concurrency, "requests": len(times["gateway"]),
               # the gateway process's own CPU per request it served (warm-up requests included)
               "gateway_cpu_ms": (cpu_seconds(child.pid) - cpu_before) * 1000 / (len(times["gateway"]) + 20)}
        for name, values in times.items():
            row[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99), "mean": statistics.fmean(values)}
        row["added_p50"] = row["gateway"]["p50"] - row["direct"]["p50"]
        row["added_p99"] = row["gateway"]["p99"] - row["direct"]["p99"]
        rows.append(row)
        print(f"  concurrency {concurrency}: added p50 {row['added_p50'] * 1000:.2f} ms, p99 {row['added_p99'] * 1000:.2f} ms, "
              f"gateway CPU {row['gateway_cpu_ms']:.2f} ms per request", file=sys.stderr)
    procs.stop(child)
    return rows


# -- the section --------------------------------------------------------------------------------


def section(run: dict) -> str:
    one = run["throughput"][0]["tokens_per_s"]
    loads = run["load"]
    quiet = max(loads.values()) < QUIET_LOAD
    lines = [SECTION, "",
             f"Measured {run['date']} by `benchmarks/scaleout.py{' --quick' if run['quick'] else ''}` at commit "
             f"{run['commit']}, on {run['cpus']} CPUs ({run['cpu']}). 1-minute load average: "
             f"{loads['start']:.2f} at the start, {loads['end']:.2f} at the end"
             + ("." if quiet else f": **not a quiet machine (>= {QUIET_LOAD}); these figures must be taken again on one.**"),
             "", "### Goals", "", "| goal | target | measured | |", "|---|---:|---:|---|"]
    for r in run["throughput"][1:]:
        ratio = r["tokens_per_s"] / (r["nodes"] * one)
        lines.append(f"| throughput with {r['nodes']} nodes ÷ ({r['nodes']} x 1 node) | >= 0.90 | {ratio:.2f} | "
                     f"{'met' if ratio >= 0.9 else 'not met'} |")
    seq = run["latency"][0]
    for key, target in (("added_p50", 3.0), ("added_p99", 10.0)):
        value = seq[key] * 1000
        verdict = "met" if value <= target else ("not met" if quiet else "not met (loaded machine)")
        lines.append(f"| latency the gateway adds, {key[6:]}, sequential | <= {target:.0f} ms | {value:.2f} ms | {verdict} |")
    lines += ["", f"### Throughput: {run['args']['gateways']} gateways, fake nodes of {run['args']['slots']} slots at "
              f"{run['args']['token_delay'] * 1000:.0f} ms per token, {run['args']['max_tokens']}-token non-streamed requests", "",
              "| nodes | in flight | output tok/s | ideal tok/s | ÷ ideal | requests | failed | requests per node |",
              "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in run["throughput"]:
        shares = " / ".join(f"{s:.0%}" for s in r["shares"])
        lines.append(f"| {r['nodes']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | {r['ideal_tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / r['ideal_tokens_per_s']:.2f} | {r['requests']} | {r['failures']} | {shares} |")
    lines += ["", "### Added latency: one gateway in front of one fake node answering 8 tokens at once", "",
              "Each client alternates the node's own chat route (direct) and the gateway's; end-to-end times, non-streamed.", "",
              "| in flight | requests per path | direct p50 / p99 (ms) | via gateway p50 / p99 (ms) | added p50 / p99 (ms) | gateway CPU per request (ms) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in run["latency"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['direct']['p50'] * 1000:.2f} / {r['direct']['p99'] * 1000:.2f} | "
                     f"{r['gateway']['p50'] * 1000:.2f} / {r['gateway']['p99'] * 1000:.2f} | "
                     f"{r['added_p50'] * 1000:.2f} / {r['added_p99'] * 1000:.2f} | {r['gateway_cpu_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path) -> None:
    """Replace this script's section of RESULTS.md (kept at the end: compare.py keeps what follows
    its own sections)."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION)
    if start >= 0:
        following = old.find("\n## ", start + len(SECTION))
        old = old[:start].rstrip("\n") + ("\n\n" + old[following + 1:] if following >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the script)")
    ap.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    ap.add_argument("--gateways", type=int, default=2)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--token-delay", type=float, default=0.02)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--requests", type=int, default=1000, help="per path, in the latency runs")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.requests = 6.0, 2.0, 200
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="chatforge-scaleout-") as tmp, Stores() as stores:
        procs = Processes(Path(tmp))
        try:
            print("throughput:", file=sys.stderr)
            through = throughput(procs, stores, args)
            print("added latency:", file=sys.stderr)
            lat = latency(procs, stores, args)
        finally:
            procs.stop_all()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    run = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "commit": commit, "cpus": os.cpu_count(), "cpu": cpu,
           "load": {"start": load_start, "end": os.getloadavg()[0]}, "args": vars(args), "throughput": through, "latency": lat}
    text = section(run)
    if args.write:
        write_section(text, HERE / "RESULTS.md")
    print(text)


if __name__ == "__main__":
    main()
