"""chatforge against llama-cpp-python's server, side by side, on the bundled GGUF.

Starts both servers (chatforge with 2 torch threads, the peer with 2 threads, from
benchmarks/.peer-venv: run `benchmarks/peer_llamacpp.sh setup` once first), runs
`chatforge bench --compare` on the issue's workloads, and writes benchmarks/RESULTS.md with
the figures, the exact commands and the machine.

    .venv/bin/python benchmarks/compare.py [--out benchmarks/RESULTS.md] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from results_md import render_results  # a sibling module (this file runs as a script)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHATFORGE = ROOT / ".venv" / "bin" / "chatforge"
PEER_SCRIPT = HERE / "peer_llamacpp.sh"
PEER_PY = HERE / ".peer-venv" / "bin" / "python"

# chatforge's engine settings per --engine (environment variables of `chatforge serve`).
# "fast": q4 (the GGUF's own Q4_1 grid for the layers, Q8_0 for the lm_head, 8-bit activations in
# blocks of 32: llama.cpp's arithmetic) for every step and no batch-invariance
# padding, the configuration comparable with llama.cpp; "default": the deterministic defaults
# (float32, batch-invariant).
ENGINES = {
    "fast": {"CHATFORGE_ENGINE__WEIGHTS": "q4", "CHATFORGE_ENGINE__BATCH_INVARIANT": "false"},
    "default": {},
}

# The workloads. Each is one `chatforge bench` run; both servers get the same requests.
WORKLOADS = {
    "decode": ["--concurrency", "1,32", "--prompt-tokens", "32", "--output-tokens", "128"],
    "prefix": ["--concurrency", "1", "--num-requests", "0", "--shared-prefix-tokens", "1000",
               "--prefix-pairs", "6", "--prompt-tokens", "32", "--output-tokens", "16"],
}
QUICK = {  # a smoke run of this script: the same shapes, a few requests
    "decode": ["--concurrency", "1,4", "--num-requests", "4", "--prompt-tokens", "16", "--output-tokens", "16"],
    "prefix": ["--concurrency", "1", "--num-requests", "0", "--shared-prefix-tokens", "200",
               "--prefix-pairs", "2", "--prompt-tokens", "16", "--output-tokens", "4"],
}


@contextmanager
def server(name: str, cmd: list[str], ready_url: str, log: Path, timeout_s: float = 300, env: dict | None = None):
    """Runs `cmd` (with `env` added to the environment) until the block ends; waits until
    `ready_url` answers 200."""
    print(f"starting {name}: {' '.join(f'{k}={v}' for k, v in (env or {}).items())} {shlex.join(cmd)}", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit(f"{name} not ready after {timeout_s:.0f} s; see {log}")
            time.sleep(1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


class LoadSampler:
    """Samples the 1-minute load average every 10 s while the benchmark runs. The benchmark itself
    accounts for about 2-3 (one server's 2 threads plus the client): more means other work shared
    the cores and skewed the figures."""

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
        return f"mean {sum(self.samples) / len(self.samples):.2f}, max {max(self.samples):.2f} ({len(self.samples)} samples)"


def machine() -> dict:
    info = {}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Flags"):
            info[key.strip()] = value.strip()
    flags = set(info.pop("Flags", "").split())
    info["SIMD"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags)
    mem_kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    info["Memory"] = f"{mem_kb / 2**20:.1f} GiB"
    return info


def versions() -> dict:
    def out(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {
        "chatforge commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "torch": out([sys.executable, "-c", "import torch; print(torch.__version__)"]),
        "llama-cpp-python": out([str(PEER_PY), "-c", "import llama_cpp; print(llama_cpp.__version__)"]),
    }


# Sections of RESULTS.md written by other scripts (benchmarks/offline_decode.py): kept as they are.
KEPT_FROM = "## Offline decode, engine only"


def kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    start = text.find(KEPT_FROM)
    return "" if start < 0 else "\n" + text[start:]


def light_single_stream(urls: dict[str, str], rounds: int, output_tokens: int) -> dict:
    """Single-stream decode speed seen by the lightest client we have: one synchronous httpx
    stream at a time, alternating the servers request by request. Per request: (content chunks
    - 1) / (last chunk - first chunk). Both servers' threads share the 2 cores with the client,
    and llama.cpp's spinning workers are the more sensitive to it, so this is the second opinion
    on the single-stream ratio beside `chatforge bench`'s asyncio client."""
    body = {"messages": [{"role": "user", "content": "Write a long story about a dragon and a knight."}],
            "max_tokens": output_tokens, "min_tokens": output_tokens, "ignore_eos": True, "temperature": 0,
            "stream": True}
    speeds: dict[str, list[float]] = {name: [] for name in urls}
    with httpx.Client(timeout=600) as client:
        models = {name: client.get(f"{url}/v1/models").json()["data"][0]["id"] for name, url in urls.items()}
        for _ in range(rounds):
            for name, url in urls.items():
                stamps = []
                with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "model": models[name]}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            choices = json.loads(line[6:]).get("choices") or [{}]
                            if choices[0].get("delta", {}).get("content"):
                                stamps.append(time.perf_counter())
                if len(stamps) > 1:
                    speeds[name].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return speeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--work", type=Path, default=HERE / ".runs", help="server logs and JSON results")
    ap.add_argument("--chatforge-port", type=int, default=18000)
    ap.add_argument("--peer-port", type=int, default=18001)
    ap.add_argument("--quick", action="store_true", help="a few small requests, to check the set-up")
    ap.add_argument("--engine", choices=list(ENGINES), default="fast", help="chatforge's engine settings (see ENGINES)")
    args = ap.parse_args()
    if not PEER_PY.exists():
        raise SystemExit(f"no peer in {PEER_PY.parent.parent}: run {PEER_SCRIPT} setup first")
    args.work.mkdir(parents=True, exist_ok=True)
    ours, peer = f"http://127.0.0.1:{args.chatforge_port}", f"http://127.0.0.1:{args.peer_port}"
    commands, results = {}, {}
    with ExitStack() as stack:
        load = stack.enter_context(LoadSampler())
        stack.enter_context(server("chatforge", [str(CHATFORGE), "serve", "--port", str(args.chatforge_port), "--threads", "2"],
                                   f"{ours}/health", args.work / "chatforge.log", env=ENGINES[args.engine]))
        stack.enter_context(server("llama-cpp-python", [str(PEER_SCRIPT), "serve", str(args.peer_port)],
                                   f"{peer}/v1/models", args.work / "peer.log"))
        for name, options in (QUICK if args.quick else WORKLOADS).items():
            out = args.work / f"{name}.json"
            cmd = [str(CHATFORGE), "bench", ours, "--compare", peer, "--label", "chatforge",
                   "--compare-label", "llama-cpp-python", *options, "--json", str(out)]
            print(f"running: {shlex.join(cmd)}", flush=True)
            subprocess.run(cmd, check=False, cwd=ROOT)
            commands[name] = shlex.join(["chatforge", "bench", "URL", "--compare", "PEER_URL", *options])
            results[name] = json.loads(out.read_text()) if out.exists() else None
        rounds = 2 if args.quick else 8
        print(f"running: light single-stream client, {rounds} rounds", flush=True)
        results["light"] = light_single_stream({"chatforge": ours, "llama-cpp-python": peer}, rounds, 128)
    info = machine()
    info["1-minute load average during the run"] = load.summary()
    engine = " ".join(f"{k}={v}" for k, v in ENGINES[args.engine].items())
    report = render_results(results, commands, info, versions(), dt.date.today().isoformat(), args.quick, engine)
    args.out.write_text(report + kept_sections(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
