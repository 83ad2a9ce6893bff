"""`chatforge nodes`: each model's upstreams, as the config names them, probed now the way a
gateway probes them (health routes only, nothing generated): healthy or not and why, the probe's
round trip, and the sequences a chatforge node reports waiting. Exit status 1 when a model has no
healthy upstream, so scripts and orchestrators can use it as a check."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def nodes_command(
    config: Annotated[Optional[Path], typer.Option(help="TOML config file (the gateways')")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="model path or id (repeatable)")] = None,
    upstream: Annotated[Optional[list[str]], typer.Option("--upstream", help="[KIND=]URL (repeatable; for one model)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON list on the last line")] = False,
) -> None:
    """List every model's upstreams and their health (probed now; nothing is generated)."""
    from chatforge.platform.cli_format import show
    from chatforge.settings import load_settings

    try:
        settings = load_settings(config, models=model).with_model_flags(None, None, upstream)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    rows = asyncio.run(probe_upstreams(settings))
    if not rows:
        typer.echo("error: no model has upstreams (give them in [[models]] upstreams, or --upstream KIND=URL)", err=True)
        raise typer.Exit(1)
    show(as_json, rows, table=("model", "kind", "url", "status", "probe_ms", "waiting", "detail"))
    served = {r["model"] for r in rows}
    if any(not any(r["status"] == "healthy" for r in rows if r["model"] == m) for m in served):
        raise typer.Exit(1)


async def probe_upstreams(settings) -> list[dict[str, Any]]:
    from chatforge.models.source import resolve_model
    from chatforge.service.catalog import served_names
    from chatforge.upstream.client import build_client

    rows = []
    for entry in settings.model_entries():
        model_id, _ = served_names(entry, resolve_model(entry.path))
        for u in entry.upstreams:
            client = build_client(u, model_id, settings.fleet, ())
            started = time.perf_counter()
            try:
                probe = await client.probe()
            finally:
                await client.close()
            rows.append({"model": model_id, "kind": u.kind, "url": client.url,
                         "status": "healthy" if probe.healthy else "unhealthy",
                         "probe_ms": round((time.perf_counter() - started) * 1000, 1),
                         "waiting": probe.waiting if probe.healthy and u.kind == "chatforge" else None,
                         "detail": probe.detail or None})
    return rows
