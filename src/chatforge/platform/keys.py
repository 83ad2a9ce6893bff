"""API keys: made, stored, found and revoked.

A key reads `cf-<prefix>_<secret>`: 8 random alphanumerics, then 32 more (~190 bits). It is
shown once, at creation. The database keeps the visible part `cf-<prefix>` (unique, used to find
the row and safe to print) and the hex SHA-256 of the whole key. A fast hash is right here: the
secret is random and long, so no dictionary can reach it, and every request verifies a key.

Timing: the row is found by its prefix, which is public (lists and logs show it), so how long the
lookup takes tells nothing secret; the secret is then checked by comparing digests with
`hmac.compare_digest`, whose time does not depend on where they differ. Nothing is cached: a
key revoked or expired is refused from the next request on, by every gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chatforge.platform import tables as t
from chatforge.platform.accounts import Account, check_limit, get_accounts
from chatforge.platform.errors import InvalidInputError, KeyNotFoundError

KEY_SCHEME = "cf-"
PREFIX_CHARS = 8
SECRET_CHARS = 32
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"^(cf-[A-Za-z0-9]{{{PREFIX_CHARS}}})_[A-Za-z0-9]{{{SECRET_CHARS}}}$")
_PREFIX_RE = re.compile(rf"^cf-[A-Za-z0-9]{{{PREFIX_CHARS}}}$")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: int
    prefix: str  # "cf-XXXXXXXX"
    name: str | None
    accounts: tuple[Account, ...]  # never empty; the first is used when a request selects none
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None  # None: every model

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def generate_key() -> str:
    return f"{KEY_SCHEME}{_random(PREFIX_CHARS)}_{_random(SECRET_CHARS)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The visible part of a well-formed key, else None."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def verify(key: str, stored_hash: str) -> bool:
    # NOTE: compare_digest takes time independent of where the digests differ.
    return hmac.compare_digest(hash_key(key), stored_hash)


async def create_key(
    conn: AsyncConnection,
    accounts: Sequence[str],
    *,
    name: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    models: Sequence[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, ApiKey]:
    """A new key for `accounts` (names; the first is the default). Returns the full key, which
    exists nowhere else afterwards, and its stored record."""
    accounts = list(dict.fromkeys(accounts))
    if not accounts:
        raise InvalidInputError("a key needs at least one account")
    check_limit("rpm", rpm)
    check_limit("tpm", tpm)
    if models is not None:
        models = tuple(dict.fromkeys(m for m in models if m))
        if not models:
            raise InvalidInputError("a model allow-list cannot be empty (leave it out to allow every model)")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidInputError("an expiry needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        expires_at = expires_at.astimezone(timezone.utc)
    owners = await get_accounts(conn, accounts)
    key = generate_key()
    row = dict(prefix=key_prefix(key), secret_hash=hash_key(key), name=name, created_at=t.utcnow(),
               expires_at=expires_at, revoked_at=None, rpm=rpm, tpm=tpm,
               models=list(models) if models is not None else None)
    key_id = (await conn.execute(t.api_keys.insert().values(row).returning(t.api_keys.c.id))).scalar_one()
    await conn.execute(
        t.api_key_accounts.insert(),
        [{"key_id": key_id, "account_id": a.id, "position": i} for i, a in enumerate(owners)],
    )
    return key, _api_key(row | {"id": key_id}, tuple(owners))


async def find_key(conn: AsyncConnection, key: str) -> ApiKey | None:
    """The stored key matching the whole of `key`, revoked or expired ones included; None for a
    malformed key, an unknown prefix or a wrong secret."""
    prefix = key_prefix(key)
    if prefix is None:
        return None
    # One round trip on the request path: the key's row once per account, in account order.
    rows = (await conn.execute(
        select(t.api_keys, t.accounts.c.id.label("account_id"), t.accounts.c.name.label("account_name"),
               t.accounts.c.created_at.label("account_created_at"))
        .join(t.api_key_accounts, t.api_key_accounts.c.key_id == t.api_keys.c.id)
        .join(t.accounts, t.accounts.c.id == t.api_key_accounts.c.account_id)
        .where(t.api_keys.c.prefix == prefix)
        .order_by(t.api_key_accounts.c.position)
    )).all()
    if not rows or not verify(key, rows[0].secret_hash):
        return None
    owners = tuple(Account(id=r.account_id, name=r.account_name, created_at=r.account_created_at) for r in rows)
    return _api_key(rows[0]._mapping, owners)


async def any_key_exists(conn: AsyncConnection) -> bool:
    return (await conn.execute(select(t.api_keys.c.id).limit(1))).first() is not None


async def list_keys(conn: AsyncConnection, account: str | None = None) -> list[ApiKey]:
    query = select(t.api_keys).order_by(t.api_keys.c.id)
    if account is not None:
        members = (
            select(t.api_key_accounts.c.key_id)
            .join(t.accounts, t.accounts.c.id == t.api_key_accounts.c.account_id)
            .where(t.accounts.c.name == account)
        )
        query = query.where(t.api_keys.c.id.in_(members))
    return await _with_accounts(conn, list(await conn.execute(query)))


async def revoke_key(conn: AsyncConnection, prefix_or_key: str) -> ApiKey:
    """Revoke by visible prefix (or by the whole key). Revoking twice keeps the first time."""
    prefix = key_prefix(prefix_or_key) or prefix_or_key
    if not _PREFIX_RE.match(prefix):
        raise InvalidInputError("give a key's prefix, e.g. cf-AbCd1234")
    await conn.execute(
        update(t.api_keys)
        .where(t.api_keys.c.prefix == prefix, t.api_keys.c.revoked_at.is_(None))
        .values(revoked_at=t.utcnow())
    )
    row = (await conn.execute(select(t.api_keys).where(t.api_keys.c.prefix == prefix))).first()
    if row is None:
        raise KeyNotFoundError(f"no key with prefix {prefix}")
    return (await _with_accounts(conn, [row]))[0]


async def _with_accounts(conn: AsyncConnection, rows: list) -> list[ApiKey]:
    if not rows:
        return []
    members = await conn.execute(
        select(t.api_key_accounts.c.key_id, t.accounts)
        .join(t.accounts, t.accounts.c.id == t.api_key_accounts.c.account_id)
        .where(t.api_key_accounts.c.key_id.in_([r.id for r in rows]))
        .order_by(t.api_key_accounts.c.key_id, t.api_key_accounts.c.position)
    )
    owners: dict[int, list[Account]] = {}
    for m in members:
        owners.setdefault(m.key_id, []).append(Account(id=m.id, name=m.name, created_at=m.created_at))
    return [_api_key(r._mapping, tuple(owners[r.id])) for r in rows]


def _api_key(row, owners: tuple[Account, ...]) -> ApiKey:
    models = row["models"]
    return ApiKey(
        id=row["id"], prefix=row["prefix"], name=row["name"], accounts=owners,
        created_at=row["created_at"], expires_at=row["expires_at"], revoked_at=row["revoked_at"],
        rpm=row["rpm"], tpm=row["tpm"], models=tuple(models) if models is not None else None,
    )
