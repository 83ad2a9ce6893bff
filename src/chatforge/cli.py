"""The `chatforge` command: serve, chat, and the platform and benchmark sub-commands."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from chatforge.settings import Settings

app = typer.Typer(help="chatforge: a self-hosted LLM chat-completion service.", no_args_is_help=True)


@app.command()
def serve(
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="model path or id (repeatable); default: the bundled model")] = None,
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default 8000)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML config file")] = None,
    database_url: Annotated[Optional[str], typer.Option(help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="redis://HOST:PORT/DB, shared rate limits")] = None,
    threads: Annotated[Optional[int], typer.Option(help="compute threads for the engine (default: the CPUs the process may use)")] = None,
    chat_template: Annotated[Optional[str], typer.Option("--chat-template", help="the model's chat template: chatml, gemma, llama2, llama3, mistral, qwen, or a Jinja file (default: the model's own)")] = None,
    served_model_name: Annotated[Optional[list[str]], typer.Option("--served-model-name", help="a name the model answers to (repeatable; the first is its id, the others aliases)")] = None,
    allow_open_remote: Annotated[bool, typer.Option("--allow-open-remote", help="serve without API keys on a non-loopback address (anyone who reaches it may use it)")] = False,
    gateway: Annotated[bool, typer.Option("--gateway", help="no weights: every model runs on its upstreams (dialects, keys, limits and usage here)")] = False,
    engine_only: Annotated[bool, typer.Option("--engine-only", help="a node: the engines behind the internal token-level routes for gateways, and the OpenAI routes")] = False,
    upstream: Annotated[Optional[list[str]], typer.Option("--upstream", help="[KIND=]URL of an engine with the model's weights (repeatable); KIND: chatforge (default), vllm, llamacpp, openai, router")] = None,
) -> None:
    """Serve models over HTTP in the OpenAI, Infomaniak and Scale EGP dialects. SIGTERM or
    Ctrl-C drains (new requests 503, admitted ones finish or are cut at the drain timeout) and
    exits 0; a second one stops at once."""
    from chatforge.api import server
    from chatforge.api.app import create_app
    from chatforge.logs import configure_logging
    from chatforge.settings import load_settings

    # --threads is one field of [engine]: given as a partial table, it is merged with the
    # environment's and the file's engine settings (flags win), never written in afterwards.
    if gateway and engine_only:
        typer.echo("error: --gateway and --engine-only are two different roles: pick one", err=True)
        raise typer.Exit(1)
    role = "gateway" if gateway else "node" if engine_only else None
    settings = load_settings(config, models=model, host=host, port=port, database_url=database_url, redis_url=redis_url,
                             allow_open_remote=allow_open_remote or None, role=role,
                             engine={"threads": threads} if threads is not None else None)
    try:
        settings = settings.with_model_flags(chat_template, served_model_name, upstream)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    configure_logging(settings.log_level)
    refusal = asyncio.run(open_remote_refusal(settings))
    if refusal is not None:
        typer.echo(f"error: {refusal}", err=True)
        raise typer.Exit(1)
    catalog = _load_catalog(settings)
    app_ = create_app(settings, catalog)
    url = f"http://{settings.host}:{settings.port}"
    role_note = {"gateway": " (gateway)", "node": " (node)"}.get(settings.role, "")
    typer.echo(f"chatforge serving {', '.join(m.model_id for m in catalog.models)} at {url}/v1{role_note}")
    try:
        status = server.run(app_, settings.host, settings.port, settings.server,
                            drain=lambda: app_.state.drain.run(settings.server.drain_timeout_s),
                            log_level=settings.log_level)
    finally:
        for m in catalog.models:
            m.engine.shutdown(0.0)  # the drain has ended every request already
    if status:
        raise typer.Exit(status)


def _load_catalog(settings: Settings):
    """The models to serve; a wrong path or setting is said in one line and exits 1."""
    from chatforge.models.errors import ModelError
    from chatforge.models.source import ModelNotFoundError
    from chatforge.text.errors import ChatTemplateError

    if settings.role == "gateway":  # neither weights nor torch
        from chatforge.upstream.loading import NoUpstreamsError, load_gateway_catalog

        load, failures = load_gateway_catalog, (ModelError, ModelNotFoundError, ChatTemplateError, NoUpstreamsError)
    else:
        from chatforge.models.native import NativeKernelsUnavailable
        from chatforge.service.loading import load_catalog

        load, failures = load_catalog, (ModelError, ModelNotFoundError, NativeKernelsUnavailable, ChatTemplateError)
    try:
        return load(settings)
    except failures as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def open_remote_refusal(settings: Settings) -> str | None:
    """Why the server must not start, if it would listen beyond loopback with no key to ask
    for (open mode there would serve anyone who reaches the address); None when it may."""
    from chatforge.platform import keys
    from chatforge.platform.db import create_engine
    from chatforge.platform.gate import is_loopback_host
    from chatforge.platform.migrations import upgrade

    if is_loopback_host(settings.host) or settings.allow_open_remote:
        return None
    if settings.role == "node" and settings.fleet.node_token is None:
        return (f"refusing to serve a node's internal routes on {settings.host} without a node token: anyone who can "
                "reach it could generate with it. Set fleet.node_token (CHATFORGE_FLEET__NODE_TOKEN) on the node and "
                "its gateways, listen on 127.0.0.1, or pass --allow-open-remote to serve openly on purpose.")
    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            if await keys.any_key_exists(conn):
                return None
    finally:
        await engine.dispose()
    return (f"refusing to serve on {settings.host} without API keys: anyone who can reach it could use it. "
            "Create a key first (chatforge accounts create NAME; chatforge keys create --account NAME), "
            "listen on 127.0.0.1, or pass --allow-open-remote (CHATFORGE_ALLOW_OPEN_REMOTE=true) to serve openly on purpose.")


@app.command()
def chat(
    url: Annotated[Optional[str], typer.Option(help="a chatforge (or any OpenAI-compatible) server, e.g. http://127.0.0.1:8000; default: the bundled model in-process")] = None,
    model: Annotated[Optional[str], typer.Option(help="model id")] = None,
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per answer at most")] = 512,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.7,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHATFORGE_API_KEY", help="bearer key for the server")] = None,
    json_schema: Annotated[Optional[str], typer.Option(help="answer in JSON valid for this schema (inline JSON or a file)")] = None,
) -> None:
    """A terminal chat with streaming output. Empty line or Ctrl-D ends it."""
    from chatforge.chat_client import HttpChat, LocalChat, run_chat
    from chatforge.schema_option import load_json_schema

    try:
        schema = load_json_schema(json_schema) if json_schema is not None else None
    except ValueError as e:
        typer.echo(f"error: --json-schema: {e}", err=True)
        raise typer.Exit(2) from None
    from chatforge.errors import ChatforgeError

    backend = HttpChat(url, model, api_key, schema) if url else LocalChat(model, schema)
    try:
        asyncio.run(run_chat(backend, system=system, max_tokens=max_tokens, temperature=temperature,
                             stdin=sys.stdin, stdout=sys.stdout))
    except (RuntimeError, ChatforgeError) as e:  # the server's or the service's refusal, in one line
        typer.echo(f"\nerror: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        backend.close()


# Sub-commands that live with their concern; both import only typer until they run.
from chatforge.bench.command import bench_command  # noqa: E402
from chatforge.platform.cli import register as register_platform  # noqa: E402
from chatforge.upstream.cli import nodes_command  # noqa: E402

app.command("bench")(bench_command)
app.command("nodes")(nodes_command)
register_platform(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
