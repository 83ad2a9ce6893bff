"""Accounts, API keys, products, deployments and the usage ledger.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("name", name="uq_accounts_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("expires_at", _UTC, nullable=True),
        sa.Column("revoked_at", _UTC, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("models", sa.JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_table(
        "api_key_accounts",
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_api_key_accounts_key_id_api_keys"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_api_key_accounts_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("key_id", "account_id", name="pk_api_key_accounts"),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("default_model", sa.String(200), nullable=False),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_products_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_products"),
    )
    op.create_index("ix_products_account_id", "products", ["account_id"])
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_deployments_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
    )
    op.create_index("ix_deployments_account_id", "deployments", ["account_id"])
    op.create_table(
        "usage",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("account_id", sa.Integer, nullable=True),
        sa.Column("product_id", sa.Integer, nullable=True),
        sa.Column("deployment_id", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("dialect", sa.String(32), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("estimated_cost", sa.Double, nullable=False),
        sa.Column("latency_s", sa.Double, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage"),
    )
    op.create_index("ix_usage_created_at", "usage", ["created_at"])
    op.create_index("ix_usage_key_id", "usage", ["key_id"])
    op.create_index("ix_usage_account_id", "usage", ["account_id"])


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("deployments")
    op.drop_table("products")
    op.drop_table("api_key_accounts")
    op.drop_table("api_keys")
    op.drop_table("accounts")
