"""`chatforge accounts | keys | products | deployments | usage`: the platform's admin commands.

The main CLI mounts them with `register(app)` (or `app.add_typer(keys_app, name="keys")`, ...).
Every command migrates the database first, so it works on a fresh SQLite file, and takes
`--json`: then the last line of stdout is one JSON object or list. Errors go to stderr with exit
status 1. Naive ISO times (`--expires 2030-01-01`) are read as UTC.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from chatforge.platform import accounts, keys, reports
from chatforge.platform.cli_format import account_json, deployment_json, key_json, product_json, show
from chatforge.platform.db import create_engine
from chatforge.platform.errors import InvalidInputError, PlatformError
from chatforge.platform.migrations import upgrade

T = TypeVar("T")

DatabaseUrl = Annotated[str, typer.Option("--database-url", envvar="CHATFORGE_DATABASE_URL",
                                          help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON value on the last line")]
DEFAULT_DB = "sqlite:///./chatforge.db"

accounts_app = typer.Typer(help="Accounts: who pays for requests.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (shown once, at creation).", no_args_is_help=True)
products_app = typer.Typer(help="Products: integer ids for the Infomaniak routes.", no_args_is_help=True)
deployments_app = typer.Typer(help="Deployments: string ids for the EGP routes.", no_args_is_help=True)


@asynccontextmanager
async def _transaction(database_url: str):
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        await engine.dispose()


def _run(database_url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _transaction(database_url) as conn:
            return await work(conn)

    try:
        return asyncio.run(main())
    except PlatformError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


def _utc(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        typer.echo(f"error: {option} wants an ISO date or time, e.g. 2030-01-01T00:00:00Z; got {text!r}", err=True)
        raise typer.Exit(2) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InvalidInputError(f"--param wants KEY=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


@accounts_app.command("create")
def accounts_create(name: str, database_url: DatabaseUrl = DEFAULT_DB, as_json: AsJson = False) -> None:
    """Create an account."""
    account = _run(database_url, lambda conn: accounts.create_account(conn, name))
    show(as_json, account_json(account), f"Created account {account.name} (id {account.id}).")


@accounts_app.command("list")
def accounts_list(database_url: DatabaseUrl = DEFAULT_DB, as_json: AsJson = False) -> None:
    """List the accounts."""
    found = _run(database_url, accounts.list_accounts)
    show(as_json, [account_json(a) for a in found], table=("id", "name", "created_at"))


@keys_app.command("create")
def keys_create(
    account: Annotated[list[str], typer.Option("--account", help="repeat for a key of several accounts; the first is the default")],
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
    models: Annotated[str | None, typer.Option(help="allowed models, comma-separated (default: all)")] = None,
    expires: Annotated[str | None, typer.Option(help="ISO expiry time")] = None,
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """Create an API key. The key is printed once and never stored."""
    expires_at = _utc(expires, "--expires")
    allowed = _split([models]) if models is not None else None
    secret, key = _run(database_url, lambda conn: keys.create_key(
        conn, account, name=name, rpm=rpm, tpm=tpm, models=allowed, expires_at=expires_at))
    text = (f"Created key {key.prefix} for {', '.join(a.name for a in key.accounts)}.\n{secret}\n"
            "Store it now: it is not shown again.")
    show(as_json, {"key": secret, **key_json(key)}, text)


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="only this account's keys")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """List keys (prefixes only: secrets are never stored)."""
    found = _run(database_url, lambda conn: keys.list_keys(conn, account))
    show(as_json, [key_json(k) for k in found], table=("prefix", "accounts", "state", "rpm", "tpm", "models", "expires_at"))


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="the key's prefix, e.g. cf-AbCd1234")],
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """Revoke a key at once, everywhere."""
    key = _run(database_url, lambda conn: keys.revoke_key(conn, prefix))
    show(as_json, key_json(key), f"Revoked key {key.prefix}.")


@products_app.command("create")
def products_create(
    id: Annotated[int, typer.Option("--id", help="the product id users put in the URL")],
    account: Annotated[str, typer.Option(help="the owning account")],
    model: Annotated[list[str], typer.Option("--model", help="an allowed model; repeat or comma-separate")],
    default_model: Annotated[str | None, typer.Option(help="default: the first --model")] = None,
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
    name: Annotated[str | None, typer.Option(help="a display name")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """Create a product."""
    product = _run(database_url, lambda conn: accounts.create_product(
        conn, id, account, _split(model), default_model=default_model, name=name, rpm=rpm, tpm=tpm))
    show(as_json, product_json(product), f"Created product {product.id} for {product.account.name}.")


@products_app.command("list")
def products_list(
    account: Annotated[str | None, typer.Option(help="only this account's products")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """List products."""
    found = _run(database_url, lambda conn: accounts.list_products(conn, account))
    show(as_json, [product_json(p) for p in found], table=("id", "account", "name", "models", "default_model", "rpm", "tpm"))


@deployments_app.command("create")
def deployments_create(
    id: Annotated[str, typer.Option("--id", help="the deployment id users put in the URL")],
    account: Annotated[str, typer.Option(help="the owning account")],
    model: Annotated[str, typer.Option(help="the model it serves")],
    param: Annotated[list[str] | None, typer.Option("--param", help="a default parameter KEY=VALUE (JSON value); repeat")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """Create a deployment."""
    async def work(conn: AsyncConnection):
        parameters = dict(_param(p) for p in param or [])
        return await accounts.create_deployment(conn, id, account, model, parameters)

    deployment = _run(database_url, work)
    show(as_json, deployment_json(deployment), f"Created deployment {deployment.id} for {deployment.account.name}.")


@deployments_app.command("list")
def deployments_list(
    account: Annotated[str | None, typer.Option(help="only this account's deployments")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """List deployments."""
    found = _run(database_url, lambda conn: accounts.list_deployments(conn, account))
    show(as_json, [deployment_json(d) for d in found], table=("id", "account", "model", "parameters"))


def usage(
    by: Annotated[str, typer.Option(help="key | account | model | product | deployment")] = "account",
    since: Annotated[str | None, typer.Option(help="only requests from this ISO time on")] = None,
    database_url: DatabaseUrl = DEFAULT_DB,
    as_json: AsJson = False,
) -> None:
    """Requests, tokens and estimated cost, grouped; requests refused by a rate limit apart."""
    since_at = _utc(since, "--since")
    rows = _run(database_url, lambda conn: reports.usage_report(conn, by, since_at))
    found = [{by: r.group, "requests": r.requests, "prompt_tokens": r.prompt_tokens,
              "completion_tokens": r.completion_tokens, "estimated_cost": r.estimated_cost,
              "rate_limited": r.rate_limited} for r in rows]
    show(as_json, found, table=(by, "requests", "prompt_tokens", "completion_tokens", "estimated_cost", "rate_limited"))


def register(app: typer.Typer) -> None:
    """Mount the platform's commands on the main CLI."""
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(keys_app, name="keys")
    app.add_typer(products_app, name="products")
    app.add_typer(deployments_app, name="deployments")
    app.command("usage")(usage)


app = typer.Typer(help="chatforge's platform administration.", no_args_is_help=True)
register(app)

if __name__ == "__main__":
    app()
