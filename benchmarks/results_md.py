"""benchmarks/RESULTS.md from the JSON of `chatforge bench --compare` runs (see compare.py)."""

from __future__ import annotations

import statistics

TARGETS = "chatforge ÷ llama-cpp-python"


def _ms(d: dict | None, key: str = "p50") -> str:
    return f"{d[key] * 1000:.0f}" if d else "-"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def _level_table(run: dict) -> list[str]:
    rows = ["| server | concurrency | ok/sent | req/s | output tok/s | TTFT p50 / p90 / p99 (ms) | ITL p50 (ms) | TPOT p50 (ms) | e2e p50 (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in run["levels"]:
        star = "" if lv["usage_reported"] else " *"
        ttft = " / ".join(_ms(lv["ttft"], k) for k in ("p50", "p90", "p99"))
        rows.append(f"| {lv['label']} | {lv['concurrency']} | {lv['requests'] - lv['failed']}/{lv['requests']} | "
                    f"{lv['request_throughput']:.2f} | {lv['output_throughput']:.1f}{star} | {ttft} | "
                    f"{_ms(lv['itl'])} | {_ms(lv['tpot'])} | {_ms(lv['e2e'])} |")
    return rows


def _ratio_table(run: dict) -> list[str]:
    rows = [f"| concurrency | output tok/s | TTFT p50 | TPOT p50 | e2e p50 |", "|---:|---:|---:|---:|---:|"]
    for c in run["comparisons"]:
        rows.append(f"| {c['concurrency']} | {_x(c['output_throughput'])} | {_x(c['ttft_p50'])} | "
                    f"{_x(c['tpot_p50'])} | {_x(c['e2e_p50'])} |")
    return rows


def _prefix_table(run: dict) -> list[str]:
    rows = ["| server | pairs ok | cold TTFT p50 (ms) | warm TTFT p50 (ms) | warm ÷ cold |", "|---|---:|---:|---:|---:|"]
    for p in run["prefix"]:
        rows.append(f"| {p['label']} | {p['pairs'] - p['failed']}/{p['pairs']} | {_ms(p['cold_ttft'])} | "
                    f"{_ms(p['warm_ttft'])} | {_x(p['warm_over_cold'])} |")
    return rows


def _verdicts(decode: dict | None, prefix: dict | None, light: dict | None = None) -> list[str]:
    out = []
    ratios = {c["concurrency"]: c["output_throughput"] for c in (decode or {}).get("comparisons", [])}
    for conc, goal in ((32, 5.0), (1, 0.7)):
        got = ratios.get(conc)
        verdict = "not measured" if got is None else ("met" if got >= goal else "not met")
        out.append(f"| output tok/s at {conc} stream{'s' if conc > 1 else ''}, {TARGETS} | >= {goal}x | {_x(got)} | {verdict} |")
    if light and all(light.get(k) for k in ("chatforge", "llama-cpp-python")):
        got = statistics.median(light["chatforge"]) / statistics.median(light["llama-cpp-python"])
        out.append(f"| decode tok/s at 1 stream, minimal client, {TARGETS} | >= 0.7x | {_x(got)} | "
                   f"{'met' if got >= 0.7 else 'not met'} |")
    ours = next((p for p in (prefix or {}).get("prefix", []) if p["label"] == "chatforge"), None)
    got = ours["warm_over_cold"] if ours else None
    verdict = "not measured" if got is None else ("met" if got <= 0.2 else "not met")
    out.append(f"| chatforge TTFT warm ÷ cold, 1,000-token shared prefix | <= 0.2x | {_x(got)} | {verdict} |")
    return out


def _light_table(light: dict) -> list[str]:
    rows = ["| server | requests | decode tok/s median | min | max |", "|---|---:|---:|---:|---:|"]
    medians = {}
    for name, speeds in light.items():
        if not speeds:
            rows.append(f"| {name} | 0 | - | - | - |")
            continue
        medians[name] = statistics.median(speeds)
        rows.append(f"| {name} | {len(speeds)} | {medians[name]:.1f} | {min(speeds):.1f} | {max(speeds):.1f} |")
    if len(medians) == 2:
        (a, ma), (b, mb) = medians.items()
        rows += ["", f"Median ratio, {a} ÷ {b}: {ma / mb:.2f}x."]
    return rows


def render_results(results: dict, commands: dict, machine: dict, versions: dict, date: str, quick: bool,
                   engine_env: str = "") -> str:
    decode, prefix = results.get("decode"), results.get("prefix")
    load = machine.get("1-minute load average during the run", "")
    busy = load.startswith("mean ") and float(load.split("max ")[1].split()[0]) > 3.0
    lines = [
        "# chatforge vs llama-cpp-python: measured side by side",
        "",
        f"Measured {date}{' (a --quick smoke run: too few requests to quote)' if quick else ''} by "
        "`benchmarks/compare.py`, which starts both servers on the bundled SmolLM2-135M-Instruct Q4_1 GGUF and "
        "runs `chatforge bench --compare`, alternating the two servers level by level (never loaded at once).",
        "",
        *(["**The machine was shared with other work during this run** (1-minute load average: "
            f"{load}; the benchmark alone accounts for about 2-3 on these 2 cores). Both servers lost time to it, "
            "llama.cpp's spinning threads more than most: treat these figures as a lower bound for both and "
            "rerun on a quiet machine before quoting them.", ""] if busy else []),
        "## Goals",
        "",
        "| goal | target | measured | |", "|---|---:|---:|---|",
        *_verdicts(decode, prefix, results.get("light")),
        "",
        "## Machine and versions",
        "",
        *(f"- {k}: {v}" for k, v in machine.items()),
        *(f"- {k}: {v}" for k, v in versions.items()),
        f"- chatforge: `{engine_env + ' ' if engine_env else ''}chatforge serve --threads 2` (otherwise the engine "
        "defaults: max 64 running sequences, prefix caching on)",
        "- llama-cpp-python: `benchmarks/peer_llamacpp.sh serve` = `python -m llama_cpp.server --n_threads 2 "
        "--n_threads_batch 2 --n_ctx 4096 --interrupt_requests false` (one request at a time; by default a new "
        "request would cut the stream in progress short instead of queueing)",
        "",
    ]
    if decode:
        lines += ["## Decode: 32-word prompts, 128 output tokens", "", f"`{commands['decode']}`", "",
                  *_level_table(decode), "", f"Ratios, {TARGETS}:", "", *_ratio_table(decode), ""]
    if prefix:
        lines += ["## Prefix cache: a repeated 1,000-token system prompt", "", f"`{commands['prefix']}`", "",
                  "Each pair sends two requests with the same (new) system prompt and different user turns, one after "
                  "the other: the first meets a cold cache, the second a warm one.", "", *_prefix_table(prefix), ""]
    light = results.get("light")
    if light:
        lines += ["## Single stream, seen by a minimal client", "",
                  "`benchmarks/compare.py` again, with one synchronous httpx stream at a time instead of "
                  "`chatforge bench`'s asyncio client, alternating the servers request by request (128 output "
                  "tokens; decode tok/s = (content chunks - 1) / (last chunk - first chunk), no TTFT).", "",
                  *_light_table(light), ""]
    lines += [
        "## How the figures are taken",
        "",
        "- Requests are streamed chat completions with `temperature 0`, `max_tokens` N, `ignore_eos: true` and "
        "`min_tokens: N`. chatforge honours both; llama-cpp-python's server ignores `ignore_eos` but honours "
        "`min_tokens` (it bans EOS until then), so both produce exactly N tokens.",
        "- Output tokens come from the usage chunk (`stream_options.include_usage`). llama-cpp-python's server sends "
        "none, so its tokens are counted as content chunks (marked *): one token per chunk, except where it holds "
        "text back for stop strings or incomplete UTF-8.",
        "- Prompt lengths are in words that are each one token for this tokenizer; the chat template adds its own "
        "tokens (SmolLM2's default system prompt when none is given).",
        "- TTFT: request sent to first content chunk; ITL: gaps between content chunks; TPOT: (e2e - TTFT) / "
        "(tokens - 1); percentiles interpolate linearly. Throughput counts a level's wall time from first send to "
        "last completion. One unmeasured warm-up request per server precedes the runs.",
        "",
        "Reproduce:",
        "",
        "```bash",
        "benchmarks/peer_llamacpp.sh setup        # once: builds llama.cpp (nice 19, one compiler job)",
        ".venv/bin/python benchmarks/compare.py   # starts both servers, runs the workloads, rewrites this file",
        "```",
        "",
    ]
    return "\n".join(lines)
