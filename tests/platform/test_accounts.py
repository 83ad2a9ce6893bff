from __future__ import annotations

import pytest

from chatforge.platform import accounts
from chatforge.platform.errors import (
    AccountNotFoundError,
    AlreadyExistsError,
    DeploymentNotFoundError,
    InvalidInputError,
    ProductNotFoundError,
)


async def test_accounts_round_trip(engine):
    async with engine.begin() as conn:
        bob = await accounts.create_account(conn, "bob")
        alice = await accounts.create_account(conn, "  alice ")
    async with engine.connect() as conn:
        assert await accounts.list_accounts(conn) == [alice, bob]
        assert await accounts.get_accounts(conn, ["bob", "alice"]) == [bob, alice]
        with pytest.raises(AccountNotFoundError, match="no account named 'carol'"):
            await accounts.get_accounts(conn, ["alice", "carol"])
    assert alice.name == "alice" and alice.created_at.tzinfo is not None
    async with engine.begin() as conn:
        with pytest.raises(AlreadyExistsError, match="account 'bob' already exists"):
            await accounts.create_account(conn, "bob")
    async with engine.begin() as conn:
        with pytest.raises(InvalidInputError, match="non-empty name"):
            await accounts.create_account(conn, "  ")


async def test_products_round_trip(engine):
    async with engine.begin() as conn:
        alice = await accounts.create_account(conn, "alice")
        bob = await accounts.create_account(conn, "bob")
        p1 = await accounts.create_product(conn, 10775, "alice", ["smollm2", "mixtral", "smollm2"], rpm=5, tpm=900)
        p2 = await accounts.create_product(conn, 42, "bob", ["a", "b"], default_model="b", name="bob's")
    assert p1 == accounts.Product(10775, alice, None, ("smollm2", "mixtral"), "smollm2", 5, 900)
    assert p2 == accounts.Product(42, bob, "bob's", ("a", "b"), "b", None, None)
    async with engine.connect() as conn:
        assert await accounts.get_product(conn, 10775) == p1
        assert await accounts.list_products(conn) == [p2, p1]
        assert await accounts.list_products(conn, "alice") == [p1]
        with pytest.raises(ProductNotFoundError, match="no product 7"):
            await accounts.get_product(conn, 7)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(product_id=1, account="ghost", models=["m"]), AccountNotFoundError, "no account named 'ghost'"),
        (dict(product_id=0, account="alice", models=["m"]), InvalidInputError, "positive integer"),
        (dict(product_id=1, account="alice", models=[]), InvalidInputError, "at least one model"),
        (dict(product_id=1, account="alice", models=["m"], default_model="x"), InvalidInputError, "not among"),
        (dict(product_id=1, account="alice", models=["m"], rpm=0), InvalidInputError, "rpm must be at least 1"),
        (dict(product_id=9, account="alice", models=["m"]), AlreadyExistsError, "product 9 already exists"),
    ],
)
async def test_product_creation_validates(engine, kwargs, error, message):
    async with engine.begin() as conn:
        await accounts.create_account(conn, "alice")
        await accounts.create_product(conn, 9, "alice", ["m"])
    async with engine.begin() as conn:
        with pytest.raises(error, match=message):
            await accounts.create_product(conn, **kwargs)


async def test_deployments_round_trip(engine):
    params = {"temperature": 0.2, "stop_sequences": ["\n\n"], "max_tokens": 64}
    async with engine.begin() as conn:
        alice = await accounts.create_account(conn, "alice")
        d1 = await accounts.create_deployment(conn, "llama-prod", "alice", "smollm2", params)
        d0 = await accounts.create_deployment(conn, "a-first", "alice", "other")
    assert d1 == accounts.Deployment("llama-prod", alice, "smollm2", params)
    async with engine.connect() as conn:
        assert await accounts.get_deployment(conn, "llama-prod") == d1
        assert await accounts.list_deployments(conn) == [d0, d1]
        assert await accounts.list_deployments(conn, "nobody") == []
        with pytest.raises(DeploymentNotFoundError, match="no deployment 'nope'"):
            await accounts.get_deployment(conn, "nope")
    async with engine.begin() as conn:
        with pytest.raises(AlreadyExistsError, match="deployment 'a-first' already exists"):
            await accounts.create_deployment(conn, "a-first", "alice", "m")
