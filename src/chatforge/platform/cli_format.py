"""How the admin commands print: JSON shapes of the platform's records, and a rich table or a
sentence for people. With `--json` the JSON value is the last line of stdout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from chatforge.platform.accounts import Account, Deployment, Product
from chatforge.platform.keys import ApiKey


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def account_json(account: Account) -> dict[str, Any]:
    return {"id": account.id, "name": account.name, "created_at": _time(account.created_at)}


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "accounts": [a.name for a in key.accounts],
        "state": key.state(datetime.now(timezone.utc)),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "models": list(key.models) if key.models is not None else None,
        "created_at": _time(key.created_at),
        "expires_at": _time(key.expires_at),
        "revoked_at": _time(key.revoked_at),
    }


def product_json(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "account": product.account.name,
        "name": product.name,
        "models": list(product.models),
        "default_model": product.default_model,
        "rpm": product.rpm,
        "tpm": product.tpm,
    }


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "account": deployment.account.name,
        "model": deployment.model,
        "parameters": deployment.parameters,
    }


def show(as_json: bool, value: Any, text: str | None = None, table: Sequence[str] = ()) -> None:
    """Print `value` as one JSON line, else `text`, else `value` (a list of dicts) as a table."""
    if as_json:
        typer.echo(json.dumps(value))
    elif text is not None:
        typer.echo(text)
    else:
        grid = Table(*table)
        for row in value:
            grid.add_row(*(_cell(row[column]) for column in table))
        Console().print(grid)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
