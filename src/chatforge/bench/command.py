"""The `chatforge bench` command: options in, a report out (a table, and JSON on request)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit

import typer

from chatforge.bench.errors import BenchError


def parse_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"--concurrency takes integers separated by commas, not {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise BenchError(f"--concurrency takes positive integers, not {text!r}")
    return levels


def _schema(option: str, value: str | None) -> dict | None:
    from chatforge.schema_option import load_json_schema

    try:
        return load_json_schema(value) if value is not None else None
    except ValueError as e:
        raise BenchError(f"{option}: {e}") from None


def bench_command(
    url: Annotated[str, typer.Argument(help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000")],
    compare: Annotated[Optional[str], typer.Option(help="a second server, measured alternately with the first")] = None,
    model: Annotated[Optional[str], typer.Option(help="model id on URL (default: the first it lists)")] = None,
    compare_model: Annotated[Optional[str], typer.Option(help="model id on the --compare server")] = None,
    label: Annotated[Optional[str], typer.Option(help="name of URL in the report (default host:port)")] = None,
    compare_label: Annotated[Optional[str], typer.Option(help="name of the --compare server in the report")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHATFORGE_API_KEY", help="bearer key for URL")] = None,
    compare_api_key: Annotated[Optional[str], typer.Option(help="bearer key for the --compare server")] = None,
    json_schema: Annotated[Optional[str], typer.Option(help="ask URL for JSON valid for this schema (inline JSON or a file): constrained decoding")] = None,
    compare_json_schema: Annotated[Optional[str], typer.Option(help="the same for the --compare server (compare a server with itself constrained: --compare URL)")] = None,
    concurrency: Annotated[str, typer.Option(help="concurrency levels, comma-separated")] = "1",
    num_requests: Annotated[Optional[int], typer.Option(help="requests per level (default 2 x concurrency, at least 8)")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="synthetic prompt length (random one-token words)")] = 32,
    output_tokens: Annotated[int, typer.Option(help="output tokens per request")] = 128,
    dataset: Annotated[Optional[Path], typer.Option(help="JSONL of {prompt} or {messages}, optional max_tokens")] = None,
    shared_prefix_tokens: Annotated[int, typer.Option(help="> 0: also measure TTFT with a shared system prompt of this length, cold vs warm")] = 0,
    prefix_pairs: Annotated[int, typer.Option(help="cold/warm request pairs of the shared-prefix scenario")] = 4,
    stream: Annotated[bool, typer.Option(help="stream responses (needed for TTFT and ITL)")] = True,
    fixed_length: Annotated[bool, typer.Option(help="send ignore_eos and min_tokens so outputs have exactly the asked length")] = True,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.0,
    warmup: Annotated[int, typer.Option(help="unmeasured requests per server first")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the synthetic prompts")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds one request may take")] = 600.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the results as JSON to this file ('-' for stdout)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Load-test OpenAI-compatible chat servers: TTFT, ITL, TPOT, latency percentiles, throughput.

    Exits 1 when any measured request failed, 2 on bad options or a server that cannot be used."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chatforge.bench.client import RequestOptions
    from chatforge.bench.machine import machine_info
    from chatforge.bench.report import render
    from chatforge.bench.runner import BenchConfig

    console = Console(stderr=json_out == Path("-"))
    try:
        config = BenchConfig(
            concurrency=parse_levels(concurrency), num_requests=num_requests, prompt_tokens=prompt_tokens,
            output_tokens=output_tokens, dataset=dataset, shared_prefix_tokens=shared_prefix_tokens,
            prefix_pairs=prefix_pairs, options=RequestOptions(stream, fixed_length, temperature),
            warmup=warmup, seed=seed, timeout_s=timeout,
        )
        targets = [(url, model, label, api_key, _schema("--json-schema", json_schema))]
        if compare:
            targets.append((compare, compare_model, compare_label, compare_api_key,
                            _schema("--compare-json-schema", compare_json_schema)))
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True), disable=not progress, transient=True)
        with bar:
            report = asyncio.run(_run(config, targets, bar))
    except BenchError as e:
        console.print(f"[red]chatforge bench: {e}[/red]")
        raise typer.Exit(2) from None
    report.machine = machine_info()
    render(report, console)
    if json_out is not None:
        text = json.dumps(report.to_json(), indent=2)
        if json_out == Path("-"):
            typer.echo(text)
        else:
            json_out.write_text(text + "\n")
    if report.failed:
        raise typer.Exit(1)


async def _run(config, targets, bar):
    import httpx

    from chatforge.bench.client import Endpoint, first_model, normalize_url
    from chatforge.bench.runner import Runner

    endpoints = []
    async with httpx.AsyncClient(timeout=30) as client:
        for url, model, label, key, schema in targets:
            root = normalize_url(url)
            name = label or urlsplit(root).netloc
            endpoints.append(Endpoint(root, model or await first_model(client, root, key), name, key, schema))
    if len(endpoints) == 2 and endpoints[0].label == endpoints[1].label:
        raise BenchError("the two servers need different labels (--label, --compare-label)")
    return await Runner(config, endpoints, bar).run()
