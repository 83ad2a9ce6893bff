"""How much memory `chatforge serve` holds for a GGUF model, against the file's size: the issue's
goal is resident memory <= 1.3 x the file + the KV cache in use. Not a timed test: a check to run
by hand, one server at a time.

    .venv/bin/python benchmarks/memory_check.py [--model gemma3-270m | PATH] [--requests 4]

It starts the server on a free port (its own SQLite file in a temporary folder), waits for
/v1/models, sends a few short /v1/completions requests, then reads the server's /proc status:
VmRSS (resident now), VmHWM (peak), RssAnon (its own memory) and RssFile (mapped files: the
shared libraries, torch's among them). The KV cache is a mapping whose untouched pages cost
nothing, so what the requests touched is counted from the tokens they used (float16 K and V of
every layer, rounded up to whole cache blocks). A process that only imports what the server
imports (torch, the API stack) and loads no model is measured too: the runtime's own share; and
one that also builds the model's tokenizer (a 262,144-token vocabulary is not small), and one that
also builds the structured-output engine's copy of the vocabulary, as the server does.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):", "The three laws of"]


def status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_only(gguf: Path | None = None, structured: bool = False) -> dict[str, int]:
    """A process that imports what the server does and loads no model (with `gguf`: builds that
    file's tokenizer too; with `structured`, also the grammar engine's view of the vocabulary)."""
    code = "import chatforge.cli, chatforge.service.loading, torch, fastapi, uvicorn, pathlib, sys, gc\n"
    if gguf:
        code += ("from chatforge.models.source import ModelSource\nfrom chatforge.text.tokenizer import load_tokenizer\n"
                 f"t = load_tokenizer(ModelSource('m', pathlib.Path({str(gguf)!r}), 'gguf')); gc.collect()\n")
    if structured:
        code += ("from chatforge.text.structured import StructuredOutput\n"
                 "s = StructuredOutput(t, t.vocab_size, eos_token_ids=sorted(t.end_of_turn_ids), mask_threads=1)\n")
    code += "print(pathlib.Path('/proc/self/status').read_text())"
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in text.splitlines())
            if v.strip().endswith("kB")}


def kv_bytes_per_token(model_path: Path) -> int:
    from chatforge.models.gguf_weights import read_gguf  # noqa: F401 (the config reader below)
    from chatforge.models.loader import read_config
    from chatforge.models.source import ModelSource

    c = read_config(ModelSource("m", model_path, "gguf"))
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2  # float16 K and V


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m", help="a GGUF path or a packaged model's alias")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    from chatforge.models.source import resolve_model

    source = resolve_model(args.model)
    file_bytes = Path(source.path).stat().st_size
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--model", str(source.path), "--port", str(port),
               "--database-url", f"sqlite:///{work}/memory.db"]
        log = open(Path(work) / "server.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.time() + 600
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited with {proc.returncode}: {(Path(work) / 'server.log').read_text()[-2000:]}")
                try:
                    models = httpx.get(f"{url}/v1/models", timeout=5)
                    if models.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("the server was not ready after 600 s")
                time.sleep(1)
            loaded = status(proc.pid)
            model_id = models.json()["data"][0]["id"]
            tokens, block = 0, 16  # block: the engine's default KV block size
            for prompt in PROMPTS[: args.requests]:
                r = httpx.post(f"{url}/v1/completions", timeout=300,
                               json={"model": model_id, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0})
                r.raise_for_status()
                usage = r.json()["usage"]
                tokens += -(-usage["total_tokens"] // block) * block
            served = status(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    kv = tokens * kv_bytes_per_token(Path(source.path))
    runtime = runtime_only()
    with_tokenizer = runtime_only(Path(source.path))
    with_structured = runtime_only(Path(source.path), structured=True)
    mib = 1 << 20
    report = {
        "model": str(source.path), "file_mib": round(file_bytes / mib, 1),
        "rss_loaded_mib": round(loaded["VmRSS"] / mib, 1), "rss_served_mib": round(served["VmRSS"] / mib, 1),
        "peak_mib": round(served["VmHWM"] / mib, 1), "rss_anon_mib": round(served["RssAnon"] / mib, 1),
        "rss_file_mib": round(served["RssFile"] / mib, 1), "kv_touched_mib": round(kv / mib, 1),
        "runtime_only_rss_mib": round(runtime["VmRSS"] / mib, 1),
        "tokenizer_rss_mib": round((with_tokenizer["VmRSS"] - runtime["VmRSS"]) / mib, 1),
        "structured_output_rss_mib": round((with_structured["VmRSS"] - with_tokenizer["VmRSS"]) / mib, 1),
        "ratio_rss_minus_kv_to_file": round((served["VmRSS"] - kv) / file_bytes, 3),
        "ratio_without_runtime": round((served["VmRSS"] - kv - runtime["VmRSS"]) / file_bytes, 3),
        "ratio_without_runtime_and_tokenizer": round((served["VmRSS"] - kv - with_tokenizer["VmRSS"]) / file_bytes, 3),
        "ratio_model_only": round((served["VmRSS"] - kv - with_structured["VmRSS"]) / file_bytes, 3),
    }
    print(json.dumps(report, indent=2))
    print(f"goal (RSS - KV in use) <= 1.3 x file: {'met' if report['ratio_rss_minus_kv_to_file'] <= 1.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
