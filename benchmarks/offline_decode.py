"""Offline decode throughput of chatforge's engine beside transformers' `generate`, same run.

Both decode the bundled SmolLM2-135M (float32, CPU) greedily from the same prompts: `batch`
prompts of `--prompt-len` random token ids, `--new-tokens` tokens each, EOS ignored. Decode
throughput counts only the tokens after the first (the first comes out of the prefill):
- chatforge: the time of the engine steps after the prefill step;
- transformers: generate(max_new_tokens=N) minus generate(max_new_tokens=1), each the median
  of `--repeats` runs.
chatforge runs in each `--variants` configuration: weights "native" (the default: chatforge's
kernels on the GGUF's own Q4_1 / Q8_0 blocks) or "exact" (torch, float32); the runs of one batch
size interleave under the same machine load.

    .venv/bin/python benchmarks/offline_decode.py --threads 2 [--variants native exact] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

import torch


# name -> EngineConfig fields
VARIANTS = {"native": dict(weights="native"), "exact": dict(weights="exact")}


def machine(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "processor": platform.processor(),
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def make_prompts(batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(100, 49000) for _ in range(length - 1)] for _ in range(batch)]


def chatforge_decode(engine, prompts: list[list[int]], new_tokens: int) -> dict:
    from chatforge.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"b{i}", prompt, params)
    start = time.perf_counter()
    engine.step()  # the whole batch's prefill fits the token budget: one step, first tokens out
    prefilled = time.perf_counter()
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    end = time.perf_counter()
    assert steps == new_tokens - 1, "the prefill did not fit one step"
    decoded = len(prompts) * (new_tokens - 1)
    return {"prefill_s": prefilled - start, "decode_s": end - prefilled, "decode_tok_s": decoded / (end - prefilled)}


def hf_decode(model, prompts: list[list[int]], new_tokens: int, repeats: int) -> dict:
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def timed(n: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    first, full = timed(1), timed(new_tokens)
    decoded = len(prompts) * (new_tokens - 1)
    return {"prefill_s": first, "decode_s": full - first, "decode_tok_s": decoded / (full - first)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="transformers runs per measurement (median)")
    ap.add_argument("--variants", nargs="+", default=["native"], choices=list(VARIANTS))
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from chatforge.engine.config import EngineConfig
    from chatforge.engine.llm_engine import LLMEngine
    from chatforge.models.backend import load_backend
    from chatforge.models.source import resolve_model

    source = resolve_model(None)
    sizes = dict(max_num_seqs=max(args.batches), num_kv_blocks=1024, max_num_batched_tokens=4096, threads=args.threads)
    engines = {}
    for name in args.variants:
        config = EngineConfig(**sizes, **VARIANTS[name])
        engines[f"chatforge {name}"] = engine = LLMEngine(load_backend(source, config.weights, threads=args.threads), config)
    # torch's threads as the engine thread would set them (the exact variant's and transformers'
    # work is torch's; with the native backend alone torch only samples)
    torch.set_num_threads(args.threads if "exact" in args.variants or not args.skip_hf else engine.torch_threads or 1)
    hf = None
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(source.path.parent), gguf_file=source.path.name, dtype=torch.float32).eval()

    results = {"machine": machine(args.threads), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "runs": []}
    for batch in args.batches:
        prompts = make_prompts(batch, args.prompt_len)
        row = {"batch": batch}
        for name, engine in engines.items():
            chatforge_decode(engine, prompts[:1], 4)  # warm-up
            row[name] = chatforge_decode(engine, prompts, args.new_tokens)
        if hf is not None:
            row["transformers"] = hf_decode(hf, prompts, args.new_tokens, args.repeats)
        results["runs"].append(row)
        print(format_row(row), flush=True)

    results["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results["machine"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def format_row(row: dict) -> str:
    parts = [f"batch {row['batch']:>2}"]
    for name, r in row.items():
        if name != "batch":
            parts.append(f"{name}: {r['decode_tok_s']:7.1f} tok/s (prefill {r['prefill_s'] * 1000:.0f} ms)")
    if "transformers" in row:
        best = max(r["decode_tok_s"] for name, r in row.items() if name.startswith("chatforge"))
        parts.append(f"best chatforge/transformers: {best / row['transformers']['decode_tok_s']:.2f}x")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
