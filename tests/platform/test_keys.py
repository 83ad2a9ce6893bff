from __future__ import annotations

import hashlib
import re
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from chatforge.platform import keys
from chatforge.platform import tables as t
from chatforge.platform.accounts import create_account
from chatforge.platform.db import create_engine
from chatforge.platform.errors import AccountNotFoundError, InvalidInputError, KeyNotFoundError
from chatforge.platform.migrations import upgrade


def test_key_format_prefix_and_hash():
    key = keys.generate_key()
    assert re.fullmatch(r"cf-[A-Za-z0-9]{8}_[A-Za-z0-9]{32}", key)
    assert keys.key_prefix(key) == key[:11]
    assert keys.hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert keys.verify(key, keys.hash_key(key))
    assert not keys.verify(key[:-1] + ("A" if key[-1] != "A" else "B"), keys.hash_key(key))
    assert len({keys.generate_key() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("bad", ["", "sk-abc", "cf-short_x", "cf-AbCd1234-" + "a" * 32, "cf-AbCd1234_" + "a" * 31])
def test_malformed_keys_have_no_prefix(bad):
    assert keys.key_prefix(bad) is None


async def test_create_find_list_revoke_round_trip(engine):
    async with engine.begin() as conn:
        alice = await create_account(conn, "alice")
        bob = await create_account(conn, "bob")
        expiry = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
        secret, created = await keys.create_key(
            conn, ["bob", "alice"], name="ci", rpm=5, tpm=1000, models=["smollm2", "m2"], expires_at=expiry
        )
    assert created.prefix == keys.key_prefix(secret)
    assert [a.name for a in created.accounts] == ["bob", "alice"]
    assert created.expires_at == datetime(2031, 5, 6, 5, 8, 9, tzinfo=timezone.utc)

    async with engine.connect() as conn:
        found = await keys.find_key(conn, secret)
        assert await keys.find_key(conn, secret[:-1] + ("x" if secret[-1] != "x" else "y")) is None
        assert await keys.find_key(conn, "cf-AAAAAAAA_" + "a" * 32) is None
        listed = await keys.list_keys(conn)
        only_alice = await keys.list_keys(conn, "alice")
    assert found == created
    assert found.accounts == (bob, alice)
    assert (found.rpm, found.tpm, found.models, found.name) == (5, 1000, ("smollm2", "m2"), "ci")
    assert found.state(datetime.now(timezone.utc)) == "active"
    assert found.state(expiry) == "expired"
    assert listed == [created] and only_alice == [created]

    async with engine.begin() as conn:
        revoked = await keys.revoke_key(conn, created.prefix)
        again = await keys.revoke_key(conn, secret)  # by the whole key; keeps the first time
    assert revoked.revoked_at is not None and again.revoked_at == revoked.revoked_at
    assert revoked.state(datetime.now(timezone.utc)) == "revoked"


async def test_key_creation_validates(engine):
    async with engine.begin() as conn:
        await create_account(conn, "alice")
    cases = [
        (dict(accounts=[]), InvalidInputError, "at least one account"),
        (dict(accounts=["ghost"]), AccountNotFoundError, "no account named 'ghost'"),
        (dict(accounts=["alice"], rpm=0), InvalidInputError, "rpm must be at least 1"),
        (dict(accounts=["alice"], tpm=-5), InvalidInputError, "tpm must be at least 1"),
        (dict(accounts=["alice"], models=[""]), InvalidInputError, "allow-list cannot be empty"),
        (dict(accounts=["alice"], expires_at=datetime(2030, 1, 1)), InvalidInputError, "needs a timezone"),
    ]
    for kwargs, error, message in cases:
        async with engine.begin() as conn:
            with pytest.raises(error, match=message):
                await keys.create_key(conn, kwargs.pop("accounts"), **kwargs)
    async with engine.begin() as conn:
        with pytest.raises(KeyNotFoundError, match="no key with prefix cf-AAAAAAAA"):
            await keys.revoke_key(conn, "cf-AAAAAAAA")
        with pytest.raises(InvalidInputError, match="prefix"):
            await keys.revoke_key(conn, "alice")
        assert await keys.any_key_exists(conn) is False


async def _make_keys(engine) -> list[str]:
    async with engine.begin() as conn:
        await create_account(conn, "alice")
        return [(await keys.create_key(conn, ["alice"]))[0] for _ in range(3)]


def _assert_no_secret(dump: str, made: list[str]) -> None:
    for key in made:
        prefix, secret = key.split("_")
        assert prefix in dump  # the dump does hold the keys' rows...
        assert keys.hash_key(key) in dump
        assert key not in dump and secret not in dump  # ...but never the secret part


async def test_sqlite_dump_holds_no_full_key(tmp_path):
    path = tmp_path / "dump.db"
    await upgrade(f"sqlite:///{path}")
    engine = create_engine(f"sqlite:///{path}")
    made = await _make_keys(engine)
    await engine.dispose()
    dump = subprocess.run(["sqlite3", str(path), ".dump"], check=True, capture_output=True, text=True).stdout
    _assert_no_secret(dump, made)


async def test_postgres_dump_holds_no_full_key(postgres_server):
    url = postgres_server.create_database()
    await upgrade(url)
    engine = create_engine(url)
    made = await _make_keys(engine)
    await engine.dispose()
    dump = subprocess.run([str(postgres_server.bin / "pg_dump"), url], check=True, capture_output=True, text=True).stdout
    _assert_no_secret(dump, made)


async def test_stored_row_is_prefix_and_hash_only(engine):
    async with engine.begin() as conn:
        await create_account(conn, "alice")
        secret, _ = await keys.create_key(conn, ["alice"])
        row = (await conn.execute(select(t.api_keys))).one()._mapping
    assert row["prefix"] == secret.split("_")[0]
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(isinstance(v, str) and secret.split("_")[1] in v for v in row.values())
