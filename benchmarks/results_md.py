"""benchmarks/RESULTS.md from benchmarks/compare.py's results (its .runs/results.json): the goals
of issue 13 with verdicts that follow the measured ratios, the figures, the machine's limits and
the fraction of them reached."""

from __future__ import annotations

PRIMARY, SECONDARY, WIDE, ONE = "llama-server", "llama-cpp-python", "llama-server (128 slots)", "chatforge (1 thread)"


def _level(results: dict, server: str, streams: int, stream: bool = False) -> dict | None:
    for source in ((server, WIDE) if server == PRIMARY else (server,)):
        for lv in (results.get(source) or {}).get("levels", []):
            if lv["streams"] == streams and lv["stream"] == stream:
                return lv
    return None


def _tok_s(results: dict, server: str, streams: int, stream: bool = False) -> float | None:
    lv = _level(results, server, streams, stream)
    return lv["tok_s"] if lv else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(v: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= target if at_least else value <= target) else "not met"


def goals(results: dict) -> list[str]:
    cf = results.get("chatforge") or {}
    one = _ratio(_tok_s(results, "chatforge", 1), _tok_s(results, PRIMARY, 1))
    many = _ratio(_tok_s(results, "chatforge", 32), _tok_s(results, PRIMARY, 32))
    busy = cf.get("contention")
    kept = _ratio(busy["busy_tok_s"], busy["quiet_tok_s"]) if busy else None
    ttft = cf.get("ttft")
    peer_ttft = (results.get(PRIMARY) or {}).get("ttft")
    cold = _ratio(ttft["cold_ms"], peer_ttft["cold_ms"]) if ttft and peer_ttft else None
    warm = _ratio(ttft["warm_ms"], ttft["cold_ms"]) if ttft else None
    rows = [
        ("output tok/s, 1 stream, chatforge ÷ llama-server", ">= 1.0x", one, 1.0, True),
        ("output tok/s, 32 streams, chatforge ÷ llama-server", ">= 4.0x", many, 4.0, True),
        ("chatforge's 1-stream tok/s beside one busy process ÷ quiet", ">= 0.3x", kept, 0.3, True),
        ("TTFT of a 1,000-token prompt, cold, chatforge ÷ llama-server", "<= 1.0x", cold, 1.0, False),
        ("chatforge TTFT warm ÷ cold, 1,000-token prompt", "<= 0.1x", warm, 0.1, False),
    ]
    out = ["| goal | target | measured | |", "|---|---:|---:|---|"]
    out += [f"| {name} | {target} | {_fmt(v, '.2f', 'x')} | {_verdict(v, t, up)} |" for name, target, v, t, up in rows]
    rss = [(s, (results.get(s) or {}).get("peak_rss_mib")) for s in ("chatforge", PRIMARY)]
    out.append(f"| peak RSS (MiB), chatforge / llama-server | reported | {_fmt(rss[0][1], '.0f')} / {_fmt(rss[1][1], '.0f')} | |")
    return out


def decode_table(results: dict) -> list[str]:
    out = ["| server | streams | requests | response | output tok/s | TTFT p50 (ms) | prompt tokens |",
           "|---|---:|---:|---|---:|---:|---:|"]
    for server in ("chatforge", ONE, PRIMARY, WIDE, SECONDARY):
        for lv in (results.get(server) or {}).get("levels", []):
            out.append(f"| {server} | {lv['streams']} | {lv['requests']} | {'streamed' if lv['stream'] else 'whole'} | "
                       f"{lv['tok_s']:.1f} | {_fmt(lv['ttft_p50_ms'], '.0f')} | {_fmt(lv['prompt_tokens'], '.0f')} |")
    return out


def ratio_table(results: dict) -> list[str]:
    out = ["| streams | response | chatforge tok/s | ÷ llama-server | ÷ llama-cpp-python |", "|---:|---|---:|---:|---:|"]
    for lv in (results.get("chatforge") or {}).get("levels", []):
        s, st = lv["streams"], lv["stream"]
        out.append(f"| {s} | {'streamed' if st else 'whole'} | {lv['tok_s']:.1f} | "
                   f"{_fmt(_ratio(lv['tok_s'], _tok_s(results, PRIMARY, s, st)), '.2f', 'x')} | "
                   f"{_fmt(_ratio(lv['tok_s'], _tok_s(results, SECONDARY, s, st)), '.2f', 'x')} |")
    return out


def ttft_table(results: dict) -> list[str]:
    out = ["| server | prompt tokens | cold TTFT (ms) | warm TTFT (ms) | warm ÷ cold |", "|---|---:|---:|---:|---:|"]
    for server in ("chatforge", PRIMARY, SECONDARY):
        t = (results.get(server) or {}).get("ttft")
        if t:
            out.append(f"| {server} | {t['prompt_tokens']:.0f} | {t['cold_ms']:.0f} | {t['warm_ms']:.0f} | "
                       f"{t['warm_ms'] / t['cold_ms']:.2f}x |")
    return out


def contention_table(results: dict) -> list[str]:
    out = ["| server | quiet tok/s | beside a busy process | kept |", "|---|---:|---:|---:|"]
    for server in ("chatforge", PRIMARY):
        c = (results.get(server) or {}).get("contention")
        if c:
            out.append(f"| {server} | {c['quiet_tok_s']:.1f} | {c['busy_tok_s']:.1f} | {c['busy_tok_s'] / c['quiet_tok_s']:.2f}x |")
    return out


def rss_table(results: dict) -> list[str]:
    out = ["| server | peak RSS (MiB) |", "|---|---:|"]
    for server in ("chatforge", ONE, PRIMARY, WIDE, SECONDARY):
        rss = (results.get(server) or {}).get("peak_rss_mib")
        if rss is not None:
            out.append(f"| {server} | {rss:.0f} |")
    return out


def roofline(results: dict) -> list[str]:
    """Fractions of the probe's limits that chatforge's decode reached."""
    probe, facts = results.get("probe"), results.get("native")
    if not probe or not facts:
        return ["(no probe)"]
    threads = probe["threads"]
    out = [f"Measured by benchmarks/probe.c on this machine (1 thread / {threads} threads): read bandwidth "
           f"{probe['read_gb_s'][0]} / {probe['read_gb_s'][1]} GB/s; float32 FMA {probe['fp32_gflop_s'][0]} / "
           f"{probe['fp32_gflop_s'][1]} GFLOP/s; int8 maddubs (AVX2) {probe['int8_maddubs_gmac_s'][0]} / "
           f"{probe['int8_maddubs_gmac_s'][1]} GMAC/s"
           + (f"; int8 vpdpbusd (AVX-512 VNNI) {probe['int8_vnni_gmac_s'][0]} / {probe['int8_vnni_gmac_s'][1]} GMAC/s"
              if "int8_vnni_gmac_s" in probe else "")
           + f". chatforge's kernels here: {facts['kernels']}, {facts['threads']} threads; the model's packed weights "
           f"{facts['weight_bytes'] / 2**20:.0f} MiB, {facts['macs_per_token'] / 1e6:.0f} M multiply-accumulates per token.", ""]
    peak_int8 = probe.get("int8_vnni_gmac_s" if facts["kernels"] == "avx512vnni" else "int8_maddubs_gmac_s")[1]
    out += ["| streams | chatforge tok/s | bound | what one token needs | reached |", "|---:|---:|---|---|---:|"]
    for streams in (1, 32, 64, 128):
        tok_s = _tok_s(results, "chatforge", streams)
        if tok_s is None:
            continue
        # reading every weight once per step, shared by the step's streams (the KV cache aside)
        bytes_per_token = facts["weight_bytes"] / streams
        bw = bytes_per_token * tok_s / 1e9 / probe["read_gb_s"][1]
        compute = facts["macs_per_token"] * tok_s / 1e9 / peak_int8
        bound, reached = ("memory", bw) if bw > compute else ("int8 compute", compute)
        out.append(f"| {streams} | {tok_s:.1f} | {bound} | {bytes_per_token / 2**20:.1f} MiB read, "
                   f"{facts['macs_per_token'] / 1e6:.0f} M MAC | {reached:.0%} |")
    return out


def errors(results: dict) -> list[str]:
    lines = [f"- {server}: {e}" for server in ("chatforge", ONE, PRIMARY, WIDE, SECONDARY)
             for e in (results.get(server) or {}).get("errors", [])]
    return ["## Measurements that failed", "", *lines, ""] if lines else []


def render_results(results: dict, date: str, quick: bool = False) -> str:
    m = results.get("machine", {})
    lines = [
        "# chatforge beside llama.cpp: measured side by side",
        "",
        f"Measured {date} by `benchmarks/compare.py`{' (--quick: a smoke run, not figures)' if quick else ''}: "
        "chatforge exactly as `make serve` runs it (no setting given) against llama.cpp's own server "
        "(the primary peer) and llama-cpp-python's server, one server at a time, on the bundled "
        "SmolLM2-135M-Instruct Q4_1 GGUF.",
        "",
        "## Goals (issue 13)",
        "",
        *goals(results),
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        *[f"- {k}: {v}" for k, v in results.get("versions", {}).items()],
        "",
        "## Decode: exactly 128 output tokens per request",
        "",
        *decode_table(results),
        "",
        "Ratios, chatforge ÷ peer:",
        "",
        *ratio_table(results),
        "",
        "## A 1,000-token prompt: time to first token",
        "",
        *ttft_table(results),
        "",
        "## One stream beside one busy single-threaded process",
        "",
        *contention_table(results),
        "",
        "## Peak resident memory of the server process",
        "",
        *rss_table(results),
        "",
        *errors(results),
        "## The machine's limits and the fraction reached",
        "",
        *roofline(results),
        "",
        "## How the figures are taken",
        "",
        "- Requests are chat completions with `temperature 0`, `max_tokens` 128, `ignore_eos: true` and "
        "`min_tokens: 128` (every server gives exactly 128 tokens), a prompt of 4 random one-token words "
        "(the chat template adds its own tokens: the prompt-token column). `whole`: non-streaming, the "
        "issue's reference; output tok/s = completion tokens of the level ÷ its wall time, from the first "
        "request sent to the last answer. A level of N streams sends 2N requests (8 at 1 stream), N at a "
        "time; one unmeasured request first.",
        "- `streamed`: the same requests streamed; TTFT = request sent to the first content chunk; tokens "
        "from the usage chunk (`stream_options.include_usage`; content chunks for a server that sends "
        "none: a token without text of its own, such as a special token past the end of the turn, sends "
        "no content).",
        "- TTFT of a 1,000-token prompt: a system prompt of 1,000 random words no cache holds (cold), then "
        "the same system prompt with another user turn (warm), one output token each (the time of the whole "
        "response), median of the pairs.",
        "- Busy neighbour: `python -c 'while True: pass'` running beside the server during the second of "
        "two one-stream runs of the same requests.",
        "- Peak RSS: the server process's VmHWM at the end of its runs.",
        "- Commands:",
        *[f"  - {name}: `{cmd}`" for name, cmd in results.get("commands", {}).items()],
        "",
        "Reproduce: `benchmarks/peer_llamacpp.sh build-server` (or `LLAMA_SERVER=/path/to/llama-server`), "
        "optionally `benchmarks/peer_llamacpp.sh setup`, then `.venv/bin/python benchmarks/compare.py`.",
        "",
    ]
    return "\n".join(lines)
