"""Accounts, products and deployments: who pays, and the named things a key may call.

An account is known to users by its unique name (also the `x-selected-account-id` value).
A product (Infomaniak) is an operator-chosen integer id owned by one account, with its allowed
models, a default model and its own RPM/TPM. A deployment (EGP) is a string id owned by one
account, bound to one model with default request parameters. Every function takes an open
`AsyncConnection`; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from chatforge.platform import tables as t
from chatforge.platform.errors import (
    AccountNotFoundError,
    AlreadyExistsError,
    DeploymentNotFoundError,
    InvalidInputError,
    ProductNotFoundError,
)


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Product:
    id: int
    account: Account
    name: str | None
    models: tuple[str, ...]  # never empty; ids or aliases as the operator wrote them
    default_model: str
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True)
class Deployment:
    id: str
    account: Account
    model: str
    parameters: dict[str, Any]  # default request parameters; the request's own values win


def check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InvalidInputError(f"{name} must be at least 1 (leave it out for no limit), got {value}")


async def create_account(conn: AsyncConnection, name: str) -> Account:
    name = name.strip()
    if not name:
        raise InvalidInputError("an account needs a non-empty name")
    row = {"name": name, "created_at": t.utcnow()}
    try:
        result = await conn.execute(t.accounts.insert().values(row).returning(t.accounts.c.id))
    except IntegrityError as exc:
        raise AlreadyExistsError(f"account {name!r} already exists") from exc
    return Account(id=result.scalar_one(), **row)


async def list_accounts(conn: AsyncConnection) -> list[Account]:
    rows = await conn.execute(select(t.accounts).order_by(t.accounts.c.name))
    return [Account(**row._mapping) for row in rows]


async def get_accounts(conn: AsyncConnection, names: Sequence[str]) -> list[Account]:
    """The accounts named, in the order given; AccountNotFoundError names the first missing."""
    rows = await conn.execute(select(t.accounts).where(t.accounts.c.name.in_(names)))
    by_name = {row.name: Account(**row._mapping) for row in rows}
    for name in names:
        if name not in by_name:
            raise AccountNotFoundError(f"no account named {name!r}")
    return [by_name[name] for name in names]


async def create_product(
    conn: AsyncConnection,
    product_id: int,
    account: str,
    models: Sequence[str],
    *,
    default_model: str | None = None,
    name: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> Product:
    if product_id < 1:
        raise InvalidInputError(f"a product id must be a positive integer, got {product_id}")
    models = tuple(dict.fromkeys(models))
    if not models:
        raise InvalidInputError("a product needs at least one model")
    default_model = default_model or models[0]
    if default_model not in models:
        raise InvalidInputError(f"the default model {default_model!r} is not among the product's models")
    check_limit("rpm", rpm)
    check_limit("tpm", tpm)
    (owner,) = await get_accounts(conn, [account])
    row = dict(id=product_id, account_id=owner.id, name=name, models=list(models),
               default_model=default_model, rpm=rpm, tpm=tpm, created_at=t.utcnow())
    try:
        await conn.execute(t.products.insert().values(row))
    except IntegrityError as exc:
        raise AlreadyExistsError(f"product {product_id} already exists") from exc
    return Product(id=product_id, account=owner, name=name, models=models,
                   default_model=default_model, rpm=rpm, tpm=tpm)


def _product(row) -> Product:
    owner = Account(id=row.account_id, name=row.account_name, created_at=row.account_created_at)
    return Product(id=row.id, account=owner, name=row.name, models=tuple(row.models),
                   default_model=row.default_model, rpm=row.rpm, tpm=row.tpm)


_PRODUCT_QUERY = select(
    t.products,
    t.accounts.c.name.label("account_name"),
    t.accounts.c.created_at.label("account_created_at"),
).join(t.accounts, t.accounts.c.id == t.products.c.account_id)


async def get_product(conn: AsyncConnection, product_id: int) -> Product:
    row = (await conn.execute(_PRODUCT_QUERY.where(t.products.c.id == product_id))).first()
    if row is None:
        raise ProductNotFoundError(f"no product {product_id}")
    return _product(row)


async def list_products(conn: AsyncConnection, account: str | None = None) -> list[Product]:
    query = _PRODUCT_QUERY.order_by(t.products.c.id)
    if account is not None:
        query = query.where(t.accounts.c.name == account)
    return [_product(row) for row in await conn.execute(query)]


async def create_deployment(
    conn: AsyncConnection,
    deployment_id: str,
    account: str,
    model: str,
    parameters: dict[str, Any] | None = None,
) -> Deployment:
    deployment_id = deployment_id.strip()
    if not deployment_id:
        raise InvalidInputError("a deployment needs a non-empty id")
    if not model:
        raise InvalidInputError("a deployment needs a model")
    (owner,) = await get_accounts(conn, [account])
    parameters = dict(parameters or {})
    row = dict(id=deployment_id, account_id=owner.id, model=model, parameters=parameters,
               created_at=t.utcnow())
    try:
        await conn.execute(t.deployments.insert().values(row))
    except IntegrityError as exc:
        raise AlreadyExistsError(f"deployment {deployment_id!r} already exists") from exc
    return Deployment(id=deployment_id, account=owner, model=model, parameters=parameters)


_DEPLOYMENT_QUERY = select(
    t.deployments,
    t.accounts.c.name.label("account_name"),
    t.accounts.c.created_at.label("account_created_at"),
).join(t.accounts, t.accounts.c.id == t.deployments.c.account_id)


def _deployment(row) -> Deployment:
    owner = Account(id=row.account_id, name=row.account_name, created_at=row.account_created_at)
    return Deployment(id=row.id, account=owner, model=row.model, parameters=dict(row.parameters))


async def get_deployment(conn: AsyncConnection, deployment_id: str) -> Deployment:
    row = (await conn.execute(_DEPLOYMENT_QUERY.where(t.deployments.c.id == deployment_id))).first()
    if row is None:
        raise DeploymentNotFoundError(f"no deployment {deployment_id!r}")
    return _deployment(row)


async def list_deployments(conn: AsyncConnection, account: str | None = None) -> list[Deployment]:
    query = _DEPLOYMENT_QUERY.order_by(t.deployments.c.id)
    if account is not None:
        query = query.where(t.accounts.c.name == account)
    return [_deployment(row) for row in await conn.execute(query)]
