"""How much memory `chatforge serve` holds for a GGUF model, against the issue's goal: weights
stay quantized, the model's resident memory <= 1.3 x the file's size + the KV cache in use. Not
a timed test: a check to run by hand, one server at a time.

    .venv/bin/python benchmarks/memory_check.py [--model gemma3-270m | PATH] [--requests 4]
    .venv/bin/python benchmarks/memory_check.py --synthetic-llama 7b   # or tiny

The real GGUFs at hand are tiny, and their fixed costs hide how the weights' memory scales;
`--synthetic-llama 7b` writes (into a temporary folder under $TMPDIR: 4.2 GiB free needed) a
Llama GGUF with random weights in the shape of a 7B/8B Q4_K_M download (hidden 4096, 32 layers,
32/8 heads, FFN 14336, llama.cpp's Q4_K/Q6_K mix) and the bundled SmolLM2's 49,152-token
vocabulary, and measures that (`tiny`: hidden 512, 4 layers, to try the path in seconds).

Three numbers, all measured in the one server process, none assumed:
- the whole process's resident memory (VmRSS) after a few /v1/completions requests, and after
  one constrained chat request as well (its first grammar builds llguidance's copy of the
  vocabulary: the grammar tables);
- the runtime's baseline: the same process just before it loaded the model (Python, torch, the
  API stack), from the server's load log line, which also splits the load into the tokenizer
  and the weights with the engine;
- the model's share: whole process - baseline (weights, tokenizer, grammar tables, and what
  serving added: the KV pages the requests touched, the forward pass's buffers), against
  1.3 x the file + the KV in use.
The KV cache is one mapping (`engine.kv_cache_mb`, 512 MiB by default) whose untouched pages
cost nothing: the KV in use is that mapping's resident size, read from /proc/PID/smaps. It is
far more than the tokens' K and V (also shown): with transparent huge pages each layer's K and V
fault in 2 MiB at a time (a first short request: 2 x layers x 2 MiB).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
from servers import anon_mappings, free_port, proc_status, running  # a sibling module (this file runs as a script)

PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):", "The three laws of"]
BLOCK = 16  # the engine's default KV block size
MIB = 1 << 20
LOADED = re.compile(r"loaded .* in ([\d.]+) s \(tokenizer ([\d.]+) s, weights and engine ([\d.]+) s\); resident memory "
                    r"(\d+) MiB before, \+(-?\d+) MiB tokenizer, \+(-?\d+) MiB weights and engine")
GRAMMAR = re.compile(r"built the grammar engine's vocabulary \((\d+) tokens\) in ([\d.]+) s, \+(-?\d+) MiB resident")


def kv_bytes_per_token(model_path: Path) -> int:
    from chatforge.models.config_files import read_config
    from chatforge.models.source import ModelSource

    c = read_config(ModelSource("m", model_path, "gguf"))
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2  # float16 K and V


def blocks_used(usage: dict) -> int:
    return -(-usage["total_tokens"] // BLOCK) * BLOCK


def kv_pool_resident(pid: int, pool_bytes: int) -> int:
    """The KV pool's resident bytes: the anonymous mapping the size of the pool (its blocks fill
    the budget to within one block and the allocator's rounding). Not simply the largest: a
    model's packed weights outgrow the pool from a few GB on."""
    fits = [(size, rss) for size, rss in anon_mappings(pid) if 0.9 * pool_bytes <= size <= pool_bytes + (4 << 20)]
    if not fits:
        raise SystemExit(f"no mapping the size of the KV pool ({pool_bytes / MIB:.0f} MiB)")
    return max(fits)[1]


def serve_and_measure(model_path: Path, args, work: Path) -> dict:
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", work / "server.log"
    cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--model", str(model_path), "--port", str(port),
           "--database-url", f"sqlite:///{work}/memory.db"]
    if args.chat_template:
        cmd += ["--chat-template", args.chat_template]
    with running("chatforge", cmd, url, log, env={"CHATFORGE_ENGINE__KV_CACHE_MB": str(args.kv_cache_mb)}) as pid:
        model_id = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        out = {"loaded": proc_status(pid), "tokens": 0}
        for prompt in PROMPTS[: args.requests]:
            r = httpx.post(f"{url}/v1/completions", timeout=300,
                           json={"model": model_id, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0})
            r.raise_for_status()
            out["tokens"] += blocks_used(r.json()["usage"])
        out["served"] = proc_status(pid)
        schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 32}}, "required": ["answer"]}
        r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": model_id, "max_tokens": args.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Name a colour, in JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
        r.raise_for_status()
        out["tokens"] += blocks_used(r.json()["usage"])
        out["constrained"] = proc_status(pid)
        out["kv_resident"] = kv_pool_resident(pid, args.kv_cache_mb * MIB)
    text = log.read_text()
    loaded, grammar = LOADED.search(text), GRAMMAR.search(text)
    if loaded is None or grammar is None:
        raise SystemExit(f"the server's log lacks its load or grammar line; see {log}:\n{text[-2000:]}")
    out["load_s"], out["tokenizer_s"], out["weights_s"] = (float(x) for x in loaded.groups()[:3])
    out["baseline_mib"], out["tokenizer_mib"], out["weights_mib"] = (int(x) for x in loaded.groups()[3:])
    out["grammar_s"], out["grammar_mib"] = float(grammar.group(2)), int(grammar.group(3))
    return out


def model_file(args, work: Path) -> tuple[Path, float | None]:
    """The GGUF to serve, and the seconds spent writing it (None for a file that was there)."""
    if not args.synthetic_llama:
        from chatforge.models.source import resolve_model

        return Path(resolve_model(args.model).path), None
    from chatforge.models.source import bundled_gguf_path
    from chatforge.models.synthetic_gguf import SHAPES, write_synthetic_llama

    path, start = work / f"random-llama-{args.synthetic_llama}-q4_k_m.gguf", time.perf_counter()
    print(f"writing {path} (random weights, shape of a {args.synthetic_llama.upper()} Q4_K_M)", flush=True)
    write_synthetic_llama(path, SHAPES[args.synthetic_llama], bundled_gguf_path())
    return path, round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m", help="a GGUF path or a packaged model's alias")
    parser.add_argument("--synthetic-llama", choices=["7b", "tiny"],
                        help="measure a random-weight Llama GGUF of this shape written for the run, not --model")
    parser.add_argument("--chat-template",
                        help="for the constrained chat request (a base model has none); '' keeps the model's own "
                             "(default: gemma, or the synthetic file's own chatml)")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--kv-cache-mb", type=int, default=512, help="the server's KV pool (its default)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.chat_template is None:
        args.chat_template = "" if args.synthetic_llama else "gemma"
    with tempfile.TemporaryDirectory() as work:
        model_path, written = model_file(args, Path(work))
        file_bytes = model_path.stat().st_size
        m = serve_and_measure(model_path, args, Path(work))
        kv_tokens = m["tokens"] * kv_bytes_per_token(model_path)
    kv = m["kv_resident"]
    baseline = m["baseline_mib"] * MIB
    whole = m["constrained"]["VmRSS"]
    share = whole - baseline
    goal = 1.3 * file_bytes + kv
    report = {
        **({"weights": f"random weights, shape of a {args.synthetic_llama.upper()} Q4_K_M",
            "written_in_s": written} if args.synthetic_llama else {}),
        "model": str(model_path), "file_mib": round(file_bytes / MIB, 1), "kv_resident_mib": round(kv / MIB, 1),
        "kv_of_the_tokens_mib": round(kv_tokens / MIB, 1),
        "load_s": {"total": m["load_s"], "tokenizer": m["tokenizer_s"], "weights_and_engine": m["weights_s"],
                   "grammar_tables_at_first_constrained_request": m["grammar_s"]},
        "whole_process_rss_mib": {"loaded": round(m["loaded"]["VmRSS"] / MIB, 1),
                                  "after_plain_requests": round(m["served"]["VmRSS"] / MIB, 1),
                                  "after_a_constrained_request": round(whole / MIB, 1),
                                  "peak": round(m["constrained"]["VmHWM"] / MIB, 1),
                                  "anon": round(m["constrained"]["RssAnon"] / MIB, 1),
                                  "file_mapped": round(m["constrained"]["RssFile"] / MIB, 1)},
        "runtime_baseline_mib": m["baseline_mib"],
        "model_share_mib": {"total": round(share / MIB, 1), "tokenizer_at_load": m["tokenizer_mib"],
                            "weights_and_engine_at_load": m["weights_mib"], "grammar_tables": m["grammar_mib"],
                            "kv_resident": round(kv / MIB, 1),
                            "the_rest": round(share / MIB - m["tokenizer_mib"] - m["weights_mib"] - m["grammar_mib"] - kv / MIB, 1)},
        "goal_mib": round(goal / MIB, 1),
        "ratio_model_share_minus_kv_to_file": round((share - kv) / file_bytes, 3),
        "ratio_whole_process_minus_kv_to_file": round((whole - kv) / file_bytes, 3),
        "ratio_whole_process_to_file": round(whole / file_bytes, 3),
    }
    print(json.dumps(report, indent=2))
    verdict = "met" if share <= goal else "NOT met"
    if args.synthetic_llama:
        print(f"(random weights, shape of a {args.synthetic_llama.upper()} Q4_K_M: "
              "the memory of such a file, not a real model)")
    print(f"goal: model's share {share / MIB:.0f} MiB <= 1.3 x file + KV in use = {goal / MIB:.0f} MiB: {verdict} "
          f"(whole process {whole / MIB:.0f} MiB, runtime baseline {baseline / MIB:.0f} MiB)")


if __name__ == "__main__":
    main()
