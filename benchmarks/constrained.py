"""Constrained decoding's costs: grammar compile time, and decode throughput of 32 constrained
streams beside 32 unconstrained ones in the same run (the issue's goals: p99 compile < 50 ms for
schemas up to 10 KiB; constrained streams keep >= 90% of the unconstrained tok/s).

1. Compile: `--schemas` generated JSON schemas from ~0.2 to 10 KiB (objects of strings with
   bounds, enums, integer ranges, arrays, nested objects, `$ref`), each compiled by
   `StructuredOutput.compile` (first mask included, as the service does before admission);
   plus tool-call grammars for 3, 32 and 128 tools. p50 / p99 / max in ms.
2. Decode: the same 32 chat prompts decoded `--new-tokens` tokens, unconstrained (EOS ignored)
   and constrained by a schema that cannot finish earlier (an array of >= 60 bounded strings);
   rounds alternate so both see the same machine load; tok/s counts decode steps only. The
   sampler's mask work is timed per decode step in those rounds (fill: llguidance's executor;
   apply: the C loop or the lookup-table add), with the share of constrained rows that needed a
   mask at all (greedy rows are masked only where the grammar refuses their argmax).

    .venv/bin/python benchmarks/constrained.py --threads 2 [--weights exact] [--json out.json]

The report ends with `goals`: each goal's measured value and whether it was met (also printed
as one line on stderr). The same comparison through a live server (the service's compile and
tool parsing included), constrained and unconstrained streams taken alternately:

    chatforge bench http://127.0.0.1:8000 --compare http://127.0.0.1:8000 --label free \
        --compare-label json --compare-json-schema '{"type": "array", "items": {"type": "string",
        "maxLength": 24}, "minItems": 60}' --concurrency 32 --output-tokens 48

A loaded machine distorts every figure here: the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_decode import machine  # noqa: E402  (the machine facts every benchmark reports)

from chatforge.engine.config import EngineConfig  # noqa: E402
from chatforge.engine.grammar_mask import GrammarMasks  # noqa: E402
from chatforge.engine.llm_engine import LLMEngine  # noqa: E402
from chatforge.engine.sampling_params import SamplingParams  # noqa: E402
from chatforge.models.backend import load_backend  # noqa: E402
from chatforge.models.source import bundled_gguf_path, resolve_model  # noqa: E402
from chatforge.text.chat_template import ChatTemplate  # noqa: E402
from chatforge.text.structured import JsonSchema, StructuredOutput  # noqa: E402
from chatforge.text.tokenizer import load_tokenizer  # noqa: E402
from chatforge.text.tool_format import SMOLLM2, FunctionTool, ToolChoice, tool_call_grammar  # noqa: E402

LONG_ARRAY = {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 60}
COMPILE_P99_GOAL_MS = 50.0  # schemas up to 10 KiB
THROUGHPUT_RATIO_GOAL = 0.90  # constrained / unconstrained tok/s, 32 streams


def random_property(rng: random.Random, depth: int) -> dict:
    kind = rng.choice(["string", "enum", "integer", "array", "object" if depth < 3 else "string", "nullable"])
    if kind == "string":
        return {"type": "string", "maxLength": rng.randrange(5, 80), "description": "a text field " * rng.randrange(1, 4)}
    if kind == "enum":
        return {"enum": [f"value_{i}" for i in range(rng.randrange(2, 12))]}
    if kind == "integer":
        low = rng.randrange(-100, 100)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randrange(1, 1000)}
    if kind == "array":
        return {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": rng.randrange(2, 8)}
    if kind == "nullable":
        return {"anyOf": [{"type": "string", "format": "email", "maxLength": 40}, {"type": "null"}]}
    return random_object(rng, rng.randrange(2, 6), depth + 1)


def random_object(rng: random.Random, num_properties: int, depth: int = 0) -> dict:
    properties = {f"field_{i}": random_property(rng, depth) for i in range(num_properties)}
    return {"type": "object", "properties": properties, "required": sorted(properties), "additionalProperties": False}


def schemas_up_to(limit_bytes: int, count: int, seed: int = 0) -> list[dict]:
    """`count` schemas spread over sizes up to `limit_bytes` of JSON, a `$ref` in every other one."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        schema = random_object(rng, rng.randrange(1, 60))
        if len(out) % 2:
            schema = {"$defs": {"shared": random_object(rng, 3)}, **schema}
            schema["properties"]["shared"] = {"$ref": "#/$defs/shared"}
        if len(json.dumps(schema)) <= limit_bytes:
            out.append(schema)
    return out


def percentiles(values_ms: list[float]) -> dict:
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(p99, 3), "max_ms": round(ordered[-1], 3)}


def bench_compile(structured: StructuredOutput, num_schemas: int) -> dict:
    schemas = schemas_up_to(10 * 1024, num_schemas)
    times = []
    for schema in schemas:
        start = time.perf_counter()
        structured.compile(JsonSchema(schema))
        times.append((time.perf_counter() - start) * 1000)
    sizes = [len(json.dumps(s)) for s in schemas]
    result = {"json_schema": {**percentiles(times), "bytes_min": min(sizes), "bytes_max": max(sizes)}}
    rng = random.Random(1)
    for num_tools in (3, 32, 128):
        tools = [FunctionTool(f"tool_{i}", random_object(rng, rng.randrange(1, 8))) for i in range(num_tools)]
        grammar = tool_call_grammar(SMOLLM2, tools, ToolChoice("auto"))
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            structured.compile(grammar)
            runs.append((time.perf_counter() - start) * 1000)
        result[f"tools_auto_{num_tools}"] = {**percentiles(runs), "grammar_bytes": len(grammar.source)}
    return result


class TimedMasks:
    """Times the sampler's GrammarMasks per decode step (real states, real rows): the masks filled
    (sampled rows before they draw; greedy rows only where the grammar refused their argmax), the
    rows filled, and the masks applied. A step that fills nothing counts as 0 ms."""

    def __init__(self, inner: GrammarMasks):
        self.inner, self.steps = inner, []
        inner_fill = inner.fill

        def timed_fill(seqs, rows=None, at=None):
            start = time.perf_counter()
            step = inner_fill(seqs, rows, at)
            if step is not None:
                self.steps[-1]["fill_ms"] += (time.perf_counter() - start) * 1000
                self.steps[-1]["rows"] += len(step.rows)
                self._time_apply(step)
            return step

        inner.fill = timed_fill  # redo_refused calls it too

    def _time_apply(self, step) -> None:
        inner_apply = step.apply

        def timed_apply(logits):
            begin = time.perf_counter()
            inner_apply(logits)
            self.steps[-1]["apply_ms"] += (time.perf_counter() - begin) * 1000

        step.apply = timed_apply

    def begin_step(self, engine=None) -> None:
        """Before each step; None before a prefill (not reported)."""
        constrained = 0 if engine is None else sum(s.matcher is not None for s in engine.scheduler.running)
        self.steps.append({"constrained": constrained, "rows": 0, "fill_ms": 0.0, "apply_ms": 0.0})

    def report(self) -> dict:
        steps = [s for s in self.steps if s["constrained"]]
        filled = sum(s["rows"] for s in steps)
        rows = sum(s["constrained"] for s in steps)
        return {"rows_max": max(s["constrained"] for s in steps), "rows_filled_share": round(filled / rows, 3),
                "fill": percentiles([s["fill_ms"] for s in steps]), "apply": percentiles([s["apply_ms"] for s in steps])}


def decode_round(engine, prompts: list[list[int]], params: SamplingParams, tag: str,
                 masks: TimedMasks | None = None) -> dict:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{tag}{i}", prompt, params)
    if masks is not None:
        masks.begin_step()
    engine.step()  # the prefill
    start, steps, tokens = time.perf_counter(), 0, 0
    while engine.has_unfinished():
        if masks is not None:
            masks.begin_step(engine)
        for out in engine.step():
            tokens += sum(len(c.new_token_ids) for c in out.outputs)
        steps += 1
    elapsed = time.perf_counter() - start
    return {"decode_steps": steps, "tokens": tokens, "seconds": round(elapsed, 3), "tok_s": round(tokens / elapsed, 2)}


def bench_decode(engine, structured, tokenizer, streams: int, new_tokens: int, rounds: int) -> dict:
    template = ChatTemplate.for_tokenizer(tokenizer)
    topics = ["fruits", "cities", "colours", "tools", "birds", "rivers", "games", "metals"]
    prompts = [tokenizer.encode(template.render([{"role": "user", "content": f"List {topics[i % 8]} number {i} as JSON."}]))
               for i in range(streams)]
    free = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    constrained = SamplingParams(temperature=0, max_tokens=new_tokens, grammar=structured.compile(JsonSchema(LONG_ARRAY)))
    runs = {"unconstrained": [], "constrained": []}
    decode_round(engine, prompts[:4], free, "warm")
    masks = TimedMasks(engine.runner.sampler.grammar_masks)
    for r in range(rounds):
        runs["unconstrained"].append(decode_round(engine, prompts, free, f"u{r}-"))
        runs["constrained"].append(decode_round(engine, prompts, constrained, f"c{r}-", masks))
    best = {name: max(run["tok_s"] for run in rs) for name, rs in runs.items()}
    return {"streams": streams, "new_tokens": new_tokens, "runs": runs, "best_tok_s": best,
            "ratio_constrained_to_unconstrained": round(best["constrained"] / best["unconstrained"], 3),
            "mask_step_ms": masks.report()}


def goals(report: dict) -> dict:
    p99 = report["compile"]["json_schema"]["p99_ms"]
    decode = report["decode"]
    ratio = decode["ratio_constrained_to_unconstrained"]
    return {
        "compile_p99_ms": {"value": p99, "goal": f"< {COMPILE_P99_GOAL_MS}", "met": p99 < COMPILE_P99_GOAL_MS},
        f"ratio_at_{decode['streams']}_streams": {"value": ratio, "goal": f">= {THROUGHPUT_RATIO_GOAL} at 32 streams",
                                                   "met": ratio >= THROUGHPUT_RATIO_GOAL},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schemas", type=int, default=200)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weights", default="native", choices=["native", "exact"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    report = {"machine": machine(args.threads), "args": {k: str(v) for k, v in vars(args).items()}}
    source = resolve_model(str(bundled_gguf_path()))
    tokenizer = load_tokenizer(source)
    config = EngineConfig(max_num_seqs=max(32, args.streams), num_kv_blocks=1024, weights=args.weights, threads=args.threads)
    backend = load_backend(source, config.weights, threads=config.threads)
    start = time.perf_counter()
    structured = StructuredOutput(tokenizer, backend.config.vocab_size, mask_threads=args.threads)
    report["llguidance_tokenizer_s"] = round(time.perf_counter() - start, 3)
    report["compile"] = bench_compile(structured, args.schemas)
    engine = LLMEngine(backend, config, stop_token_ids=sorted(tokenizer.end_of_turn_ids), seed=0)
    report["decode"] = bench_decode(engine, structured, tokenizer, args.streams, args.new_tokens, args.rounds)
    report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    report["goals"] = goals(report)
    text = json.dumps(report, indent=2)
    print(text)
    print("goals: " + "; ".join(f"{name} {g['value']} ({g['goal']}: {'met' if g['met'] else 'NOT met'})"
                                for name, g in report["goals"].items()), file=sys.stderr)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
