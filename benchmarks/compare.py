"""chatforge as `make serve` runs it against llama.cpp's own server (the primary peer) and
llama-cpp-python's server (the secondary one), on the bundled GGUF, in one run: writes
benchmarks/RESULTS.md with the figures, the goals' verdicts, the machine and its limits.

    .venv/bin/python benchmarks/compare.py [--quick] [--threads N]

Peers: llama-server from $LLAMA_SERVER or `benchmarks/peer_llamacpp.sh build-server`;
llama-cpp-python's server from `benchmarks/peer_llamacpp.sh setup` (skipped when absent).
The servers run one at a time, never together; each is measured on:
- decode: exactly 128 output tokens per request (ignore_eos), short prompts, non-streaming
  (the issue's reference) at 1, 32, 64 and 128 concurrent streams (2 x streams requests), and
  streaming at 1 and 32 (TTFT);
- a 1,000-token prompt's time to first token, cold (a prompt no cache holds) and warm (the same
  system prompt again with another user turn);
- one stream beside one busy single-threaded process (`python -c 'while True: pass'`), against
  the same stream quiet;
- the server process's peak resident memory (VmHWM).
chatforge is also measured with `--threads 1` at 1 and 32 streams, a check of its default thread
count (the CPUs the process may use).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from chatforge.bench.client import open_response
from results_md import render_results  # sibling modules (this file runs as a script)
from servers import peak_rss_mib, running

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHATFORGE = Path(sys.executable).with_name("chatforge")
PEER_SCRIPT = HERE / "peer_llamacpp.sh"
PEER_PY = HERE / ".peer-venv" / "bin" / "python"
OUTPUT_TOKENS = 128
PROMPT_WORDS = 4  # + the chat template's tokens: ~36 prompt tokens (the server's usage says)
LONG_PROMPT_WORDS = 1000
LEVEL_TIMEOUT_S = 900  # one level of one server; a collapsed server is recorded as such


def bundled_gguf() -> str:
    from chatforge.models.source import bundled_gguf_path

    return str(bundled_gguf_path())


# -- the servers -------------------------------------------------------------------------------


def server_commands(threads: int, port: int, work: Path) -> dict[str, list[str] | None]:
    gguf = bundled_gguf()
    llama = subprocess.run([str(PEER_SCRIPT), "server-path"], capture_output=True, text=True).stdout.strip()
    # llama.cpp: the reference flags; one KV pool of 24,576 tokens shared by the slots, about
    # what chatforge's default 512 MiB of float16 KV holds (23,301 tokens).
    llama_cmd = [llama, "-m", gguf, "-t", str(threads), "--cont-batching", "-c", "24576", "--kv-unified",
                 "--host", "127.0.0.1", "--port", str(port)]
    return {
        # chatforge exactly as `make serve` runs it: no engine setting given
        "chatforge": [str(CHATFORGE), "serve", "--port", str(port), "--database-url", f"sqlite:///{work / 'bench.db'}"],
        # a check of the default's thread count: the same server on one thread
        "chatforge (1 thread)": [str(CHATFORGE), "serve", "--port", str(port), "--threads", "1",
                                 "--database-url", f"sqlite:///{work / 'bench1.db'}"],
        "llama-server": llama_cmd + ["-np", "32"] if Path(llama).is_file() else None,
        "llama-server (128 slots)": llama_cmd + ["-np", "128"] if Path(llama).is_file() else None,
        "llama-cpp-python": [str(PEER_SCRIPT), "serve", str(port)] if PEER_PY.exists() else None,
    }


@contextmanager
def busy_neighbour():
    """One busy single-threaded process beside the server."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1)
        yield
    finally:
        proc.kill()
        proc.wait()


# -- the client --------------------------------------------------------------------------------


def words(rng: random.Random, n: int) -> str:
    from chatforge.bench.workload import random_words

    return random_words(rng, n)


async def one_request(client: httpx.AsyncClient, url: str, model: str, messages: list[dict], max_tokens: int,
                      stream: bool) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "min_tokens": max_tokens, "stream": stream}
    if stream:
        # Tokens from the usage chunk: a token with no text of its own (a special token once
        # ignore_eos runs past the end of the turn) sends no content chunk.
        body["stream_options"] = {"include_usage": True}
    request = client.build_request("POST", f"{url}/v1/chat/completions", json=body)
    start = time.perf_counter()
    first, chunks, usage = None, 0, None
    r = await open_response(client, request)  # llama-server closes the connection after each stream
    try:
        r.raise_for_status()
        if not stream:
            usage = json.loads(await r.aread())["usage"]
            return {"tokens": usage["completion_tokens"], "prompt_tokens": usage["prompt_tokens"],
                    "e2e": time.perf_counter() - start, "ttft": None}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            choices = chunk.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                first = first or time.perf_counter()
    finally:
        await r.aclose()
    return {"tokens": usage["completion_tokens"] if usage else chunks,
            "prompt_tokens": usage["prompt_tokens"] if usage else None, "e2e": time.perf_counter() - start,
            "ttft": None if first is None else first - start}


async def decode_level(url: str, model: str, streams: int, n_requests: int, stream: bool, seed: int) -> dict:
    """`n_requests` requests of OUTPUT_TOKENS tokens, `streams` at a time -> tok/s over the level."""
    rng = random.Random(seed)
    bodies = [[{"role": "user", "content": words(rng, PROMPT_WORDS)}] for _ in range(n_requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        async def worker():
            while not queue.empty():
                messages = queue.get_nowait()
                results.append(await one_request(client, url, model, messages, OUTPUT_TOKENS, stream))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    prompt = [r["prompt_tokens"] for r in results if r["prompt_tokens"]]
    return {"streams": streams, "requests": n_requests, "stream": stream, "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "ttft_p50_ms": statistics.median(ttfts) * 1000 if ttfts else None,
            "prompt_tokens": statistics.median(prompt) if prompt else None}


async def long_prompt_ttft(url: str, model: str, pairs: int, seed: int) -> dict:
    """Cold: a fresh 1,000-word system prompt; warm: the same system prompt, another user turn."""
    rng = random.Random(seed)
    cold, warm, prompt_tokens = [], [], []
    async with httpx.AsyncClient(timeout=1800) as client:
        for _ in range(pairs):
            system = {"role": "system", "content": words(rng, LONG_PROMPT_WORDS)}
            for bucket in (cold, warm):
                messages = [system, {"role": "user", "content": words(rng, PROMPT_WORDS)}]
                r = await one_request(client, url, model, messages, 1, stream=False)
                bucket.append(r["e2e"])  # one output token: the time to the first token and the end
                prompt_tokens.append(r["prompt_tokens"])
    return {"pairs": pairs, "prompt_tokens": statistics.median(prompt_tokens),
            "cold_ms": statistics.median(cold) * 1000, "warm_ms": statistics.median(warm) * 1000}


def first_model(url: str) -> str:
    return httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]


# The client shares the CPUs with the server it measures, and a streamed token costs it a chunk
# read and parsed: on uvloop that is about a quarter less CPU (0.56 -> 0.43 ms a token measured on
# the 2 vCPUs), the same for every server.
try:
    from uvloop import run as run_client
except ImportError:  # uvloop is uvicorn[standard]'s, on the platforms that have it
    run_client = asyncio.run


def attempt(what: str, out: dict, run):
    """run() -> its result; a failure (a timeout, a server gone) is recorded in out["errors"] and
    the rest of the server's measurements go on."""
    try:
        return run_client(asyncio.wait_for(run(), LEVEL_TIMEOUT_S))
    except (httpx.HTTPError, asyncio.TimeoutError, KeyError, ValueError) as e:
        out.setdefault("errors", []).append(f"{what}: {type(e).__name__}: {e}")
        print(f"    failed: {out['errors'][-1]}", flush=True)
        return None


def measure(name: str, url: str, pid: int, plan: dict) -> dict:
    model = first_model(url)
    out: dict = {"levels": []}
    attempt("warm-up", out, lambda: decode_level(url, model, 1, 1, False, seed=99))
    for streams, n, stream in plan["levels"]:
        print(f"  {name}: {streams} streams, {n} requests, {'streaming' if stream else 'non-streaming'}", flush=True)
        level = attempt(f"{streams} streams", out, lambda: decode_level(url, model, streams, n, stream, seed=streams))
        if level:
            out["levels"].append(level)
    if plan["ttft_pairs"]:
        print(f"  {name}: 1,000-token prompts", flush=True)
        out["ttft"] = attempt("1,000-token prompts", out, lambda: long_prompt_ttft(url, model, plan["ttft_pairs"], seed=7))
    if plan["contention"]:
        print(f"  {name}: one stream beside a busy process", flush=True)
        quiet = attempt("quiet stream", out, lambda: decode_level(url, model, 1, plan["contention"], False, seed=11))
        with busy_neighbour():
            busy = attempt("stream beside a busy process", out,
                           lambda: decode_level(url, model, 1, plan["contention"], False, seed=11))
        if quiet and busy:
            out["contention"] = {"quiet_tok_s": quiet["tok_s"], "busy_tok_s": busy["tok_s"]}
    out["peak_rss_mib"] = peak_rss_mib(pid)
    return out


# -- the machine -------------------------------------------------------------------------------


def probe(threads: int, work: Path) -> dict:
    """benchmarks/probe.c's limits of this machine."""
    binary = work / "probe"
    subprocess.run(["cc", "-O2", "-mavx2", "-mfma", "-pthread", str(HERE / "probe.c"), "-o", str(binary)], check=True)
    return json.loads(subprocess.run([str(binary), str(threads)], capture_output=True, text=True, check=True).stdout)


def machine() -> dict:
    info = {}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Flags"):
            info[key.strip()] = value.strip()
    flags = set(info.pop("Flags", "").split())
    info["SIMD"] = " ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile") if f in flags)
    mem_kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    info["Memory"] = f"{mem_kb / 2**20:.1f} GiB"
    return info


class LoadSampler:
    """The 1-minute load average every 10 s while the benchmark runs (the benchmark itself accounts
    for about 2-3: one server's threads plus the client)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(10):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        return f"mean {statistics.mean(self.samples):.2f}, max {max(self.samples):.2f} ({len(self.samples)} samples)"


def native_facts() -> dict:
    """What the default backend chose here (instruction set, threads) and its weights' bytes."""
    from chatforge.models import native
    from chatforge.models.backend import load_native
    from chatforge.models.native_model import available_cpus
    from chatforge.models.source import resolve_model

    model = load_native(resolve_model(None), threads=1)
    c = model.config
    return {"kernels": native.library().cf_select_kernels().decode(), "threads": available_cpus(),
            "weight_bytes": model.weight_bytes, "kv_bytes_per_token": model.kv_block_bytes(1),
            "macs_per_token": _macs_per_token(c)}


def _macs_per_token(c) -> int:
    """Multiply-accumulates of one token's matmuls, the lm_head included (attention excluded)."""
    per_layer = c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    per_layer += c.num_attention_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * per_layer + c.hidden_size * c.vocab_size


def versions() -> dict:
    def out(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {"chatforge commit": out(["git", "rev-parse", "--short", "HEAD"]),
            "torch": out([sys.executable, "-c", "import torch; print(torch.__version__)"]),
            "llama-cpp-python (and its vendored llama.cpp)": "0.3.36"}


PLANS = {
    # name -> what is measured on it
    "chatforge": {"levels": [(1, 8, False), (32, 64, False), (64, 128, False), (128, 256, False), (1, 4, True),
                             (32, 64, True)], "ttft_pairs": 3, "contention": 6},
    "chatforge (1 thread)": {"levels": [(1, 8, False), (32, 64, False)], "ttft_pairs": 0, "contention": 0},
    "llama-server": {"levels": [(1, 8, False), (32, 64, False), (1, 4, True), (32, 64, True)], "ttft_pairs": 3,
                     "contention": 3},
    "llama-server (128 slots)": {"levels": [(64, 128, False), (128, 256, False)], "ttft_pairs": 0, "contention": 0},
    "llama-cpp-python": {"levels": [(1, 4, False), (32, 32, False)], "ttft_pairs": 2, "contention": 0},
}
QUICK = {
    "chatforge": {"levels": [(1, 2, False), (8, 8, False), (1, 2, True)], "ttft_pairs": 1, "contention": 1},
    "chatforge (1 thread)": {"levels": [(1, 2, False)], "ttft_pairs": 0, "contention": 0},
    "llama-server": {"levels": [(1, 2, False), (8, 8, False), (1, 2, True)], "ttft_pairs": 1, "contention": 1},
    "llama-server (128 slots)": {"levels": [(8, 8, False)], "ttft_pairs": 0, "contention": 0},
    "llama-cpp-python": {"levels": [(1, 2, False)], "ttft_pairs": 0, "contention": 0},
}


# Sections of RESULTS.md written by hand or by other scripts (from this heading on): kept as they are.
KEPT_FROM = "## Notes"


def kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    start = text.find(KEPT_FROM)
    return "" if start < 0 else "\n" + text[start:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--work", type=Path, default=HERE / ".runs", help="server logs and the JSON results")
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="the peers' threads")
    ap.add_argument("--quick", action="store_true", help="a few small requests, to check the set-up")
    ap.add_argument("--only", nargs="+", help="measure only these servers")
    args = ap.parse_args()
    # a terminated run still stops the server it started (the `running` blocks' finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.work.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    plans = QUICK if args.quick else PLANS
    commands = server_commands(args.threads, args.port, Path(tempfile.mkdtemp(dir=args.work)))
    results: dict = {"commands": {}}
    with LoadSampler() as load:
        results["probe"] = probe(args.threads, args.work)
        results["native"] = native_facts()
        for name, cmd in commands.items():
            if args.only and name not in args.only:
                continue
            if cmd is None:
                print(f"skipping {name}: not built (benchmarks/peer_llamacpp.sh)", flush=True)
                continue
            results["commands"][name] = shlex.join(cmd)
            with running(name, cmd, url, args.work / f"{name.split()[0]}.log") as pid:
                results[name] = measure(name, url, pid, plans[name])
            (args.work / "results.json").write_text(json.dumps(results, indent=2))
    results["machine"] = {**machine(), "1-minute load average during the run": load.summary()}
    results["versions"] = versions()
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    args.out.write_text(render_results(results, dt.date.today().isoformat(), args.quick) + kept_sections(args.out))
    print(f"wrote {args.out} (raw figures: {args.work / 'results.json'})")


if __name__ == "__main__":
    main()
