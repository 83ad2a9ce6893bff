"""Teacher-forced top-1 agreement of chatforge with llama.cpp on the same GGUF file: how often,
given the same tokens so far, both pick the same next token. Not a test (it needs llama-server
and minutes of CPU); run it on a quiet machine:

    .venv/bin/python benchmarks/agreement.py [--model PATH_OR_ALIAS ...] [--tokens 64] [--threads 2]
        [--llama-server PATH]

Default models: the bundled SmolLM2 Q4_1 file and Gemma 3 270M Q4_K_M (`gemma3-270m`).
For each model and plain prompt: llama-server continues the prompt greedily (`--tokens` tokens);
that sequence is then teacher-forced through both: llama-server's greedy next token after every
prefix (one /completion request per position, n_predict 1, top_k 1; its prompt cache makes each
one token of work), and chatforge's backend as `chatforge serve` loads it (the default settings)
on the whole sequence in one step, argmax per position. With --exact, chatforge's float32 torch
path is compared too (the reference both quantized engines approximate).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import httpx
import torch
from servers import free_port  # a sibling module (this file runs as a script)

LLAMA_SERVER = "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "The best way to learn a new language is",
    "def fibonacci(n):",
    "In 1969, the first humans",
    "Water boils at",
]


class LlamaServer:
    """llama-server on one file, until `close`."""

    def __init__(self, binary: str, model: Path, threads: int):
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen([binary, "-m", str(model), "-t", str(threads), "-c", "4096", "-np", "1",
                                      "--host", "127.0.0.1", "--port", port],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("llama-server was not ready after 300 s")
            time.sleep(0.5)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        r = httpx.post(f"{self.url}/completion", timeout=600, json={
            "prompt": ids, "n_predict": n, "temperature": 0, "top_k": 1, "cache_prompt": True,
            "return_tokens": True, "ignore_eos": True})
        r.raise_for_status()
        return r.json()["tokens"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def chatforge_top1(backend, ids: list[int]) -> list[int]:
    """argmax of every position's logits, the sequence as one prefill step."""
    from chatforge.models.step import StepInputs

    block = 16
    blocks = -(-len(ids) // block)
    cache = backend.allocate_kv_cache(blocks, block)
    step = StepInputs(ids, [len(ids)], [len(ids)], [list(range(blocks))], list(range(len(ids))))
    return backend.execute(step, cache).argmax(-1).tolist()


def measure(model: str, args) -> dict:
    from chatforge.models.backend import load_backend
    from chatforge.models.gguf_file import GGUFFile
    from chatforge.models.source import resolve_model
    from chatforge.text.tokenizer import Tokenizer

    source = resolve_model(model)
    gguf = GGUFFile(source.path)
    try:
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
    finally:
        gguf.close()
    ours = load_backend(source, threads=args.threads)
    exact = load_backend(source, weights="exact") if args.exact else None
    server = LlamaServer(args.llama_server, Path(source.path), args.threads)
    counts = {"positions": 0, "native": 0, "exact": 0}
    try:
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, add_special_tokens=True)
            seq = ids + server.greedy(ids, args.tokens)
            theirs = [server.greedy(seq[: i + 1], 1)[0] for i in range(len(ids) - 1, len(seq) - 1)]
            positions = range(len(ids) - 1, len(seq) - 1)
            native = chatforge_top1(ours, seq)
            counts["positions"] += len(theirs)
            counts["native"] += sum(native[i] == t for i, t in zip(positions, theirs))
            if exact is not None:
                with torch.inference_mode():
                    top = chatforge_top1(exact, seq)
                counts["exact"] += sum(top[i] == t for i, t in zip(positions, theirs))
            print(f"  {prompt!r}: {tokenizer.decode(seq[len(ids):])!r}", flush=True)
    finally:
        server.close()
    result = {"model": str(source.path), "positions": counts["positions"],
              "native_agreement": round(counts["native"] / counts["positions"], 4)}
    if exact is not None:
        result["exact_float32_agreement"] = round(counts["exact"] / counts["positions"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="GGUF path or alias (repeatable)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", default=LLAMA_SERVER)
    parser.add_argument("--exact", action="store_true", help="also chatforge's float32 torch path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from chatforge.models.source import resolve_model

    models = args.model or [str(resolve_model(None).path), "gemma3-270m"]
    results = []
    for model in models:
        print(f"{model}:", flush=True)
        results.append(measure(model, args))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
