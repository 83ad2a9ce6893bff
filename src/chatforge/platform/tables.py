"""The platform's schema as SQLAlchemy Core tables, the same for SQLite and PostgreSQL.

The migrations under `migrations/versions` create exactly this (a test compares them). Times are
stored in UTC and always read back timezone-aware. No column ever holds a full API key, a prompt
or a completion: a key is kept as its visible prefix plus the SHA-256 of the whole key.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on both backends (SQLite keeps no zone: we add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# SQLite only aliases the rowid (and so autoincrements) for a column typed exactly INTEGER.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),  # also the x-selected-account-id value
    Column("created_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prefix", String(32), nullable=False, unique=True),  # "cf-XXXXXXXX": shown in lists and logs
    Column("secret_hash", String(64), nullable=False),  # hex SHA-256 of the whole key
    Column("name", String(200), nullable=True),  # the owner's label
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("rpm", Integer, nullable=True),  # None: no limit
    Column("tpm", Integer, nullable=True),
    Column("models", JSON, nullable=True),  # allow-list of model ids or aliases; None: every model
)

# A key belongs to one or more accounts; position 0 is the account used when the request
# selects none.
api_key_accounts = Table(
    "api_key_accounts",
    metadata,
    Column("key_id", Integer, ForeignKey("api_keys.id"), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("position", Integer, nullable=False),
)

products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # chosen by the operator
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=True),
    Column("models", JSON, nullable=False),  # non-empty list of model ids or aliases
    Column("default_model", String(200), nullable=False),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("parameters", JSON, nullable=False),  # default request parameters, e.g. {"temperature": 0.2}
    Column("created_at", UTCDateTime, nullable=False),
)

# One row per request that reached the model (finished, failed or aborted) or was refused by a
# rate limit (status rate_limited, no tokens). A ledger: no foreign keys, so a batch of rows never
# fails on a reference.
usage = Table(
    "usage",
    metadata,
    Column("id", _BigId, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("request_id", String(64), nullable=False, index=True),  # the response's x-request-id
    Column("key_id", Integer, nullable=True, index=True),  # None in open mode
    Column("account_id", Integer, nullable=True, index=True),
    Column("product_id", Integer, nullable=True),
    Column("deployment_id", String(200), nullable=True),
    Column("model", String(200), nullable=False),
    Column("dialect", String(32), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("estimated_cost", Double, nullable=False),  # USD
    Column("latency_s", Double, nullable=False),
    Column("status", String(16), nullable=False),  # see metering.UsageStatus
)
