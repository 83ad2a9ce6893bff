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
import tempfile
from pathlib import Path

import httpx
import torch
from servers import free_port, running  # a sibling module (this file runs as a script)

LLAMA_SERVER = "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "The best way to learn a new language is",
    "def fibonacci(n):",
    "In 1969, the first humans",
    "Water boils at",
]


def llama_server_greedy(url: str, ids: list[int], n: int) -> list[int]:
    """llama-server's n greedy tokens after `ids` (its prompt cache keeps the shared prefix)."""
    r = httpx.post(f"{url}/completion", timeout=600, json={
        "prompt": ids, "n_predict": n, "temperature": 0, "top_k": 1, "cache_prompt": True,
        "return_tokens": True, "ignore_eos": True})
    r.raise_for_status()
    return r.json()["tokens"]


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
    from chatforge.models.source import resolve_model
    from chatforge.text.tokenizer import load_tokenizer

    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    ours = load_backend(source, threads=args.threads)
    exact = load_backend(source, weights="exact") if args.exact else None
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [args.llama_server, "-m", str(source.path), "-t", str(args.threads), "-c", "4096", "-np", "1",
           "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    counts = {"positions": 0, "native": 0, "exact": 0}
    with tempfile.TemporaryDirectory() as work, running("llama-server", cmd, url, Path(work) / "llama-server.log"):
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, add_special_tokens=True)
            seq = ids + llama_server_greedy(url, ids, args.tokens)
            theirs = [llama_server_greedy(url, seq[: i + 1], 1)[0] for i in range(len(ids) - 1, len(seq) - 1)]
            positions = range(len(ids) - 1, len(seq) - 1)
            native = chatforge_top1(ours, seq)
            counts["positions"] += len(theirs)
            counts["native"] += sum(native[i] == t for i, t in zip(positions, theirs))
            if exact is not None:
                with torch.inference_mode():
                    top = chatforge_top1(exact, seq)
                counts["exact"] += sum(top[i] == t for i, t in zip(positions, theirs))
            print(f"  {prompt!r}: {tokenizer.decode(seq[len(ids):])!r}", flush=True)
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
