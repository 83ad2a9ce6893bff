"""Who calls, under which product or deployment: what one request may use and who pays for it.

A `Caller` is what the API's guards hand each route: the authenticated principal, and the
product (Infomaniak) or deployment (EGP) its path named, resolved by `Platform.product_scope` /
`Platform.deployment_scope`. The database is the source of truth for products and deployments;
in open mode an id it does not know falls back to the config tables (`settings.products`,
`settings.deployments`) and then to the server's default model, so the providers' documented
examples (product 10775, any deployment id) run as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatforge.platform.accounts import Account, Deployment, Product
from chatforge.platform.metering import UsageRecord, UsageStatus

if TYPE_CHECKING:
    from chatforge.platform.gate import Principal
    from chatforge.settings import DeploymentConfig, ProductConfig

# The ids the database can hold: products.id is a 32-bit INTEGER, deployments.id a VARCHAR(200)
# (PostgreSQL refuses NUL in text). Anything else cannot exist there and must not reach it, as a
# query parameter or in a usage row: open mode accepts such ids, and meters them without one.
MAX_PRODUCT_ID = 2**31 - 1
MAX_DEPLOYMENT_ID_CHARS = 200


def storable_product_id(product_id: int) -> bool:
    return 1 <= product_id <= MAX_PRODUCT_ID


def storable_deployment_id(deployment_id: str) -> bool:
    return len(deployment_id) <= MAX_DEPLOYMENT_ID_CHARS and "\x00" not in deployment_id


@dataclass(frozen=True)
class ProductScope:
    """What a request under `product_id` may use."""

    id: int
    name: str
    models: tuple[str, ...]  # ids or aliases as the operator wrote them; empty = every served model
    default_model: str | None  # None: the server's default
    record: Product | None = None  # the database's product (its owner and limits); None when configured

    @classmethod
    def of(cls, product: Product) -> ProductScope:
        return cls(product.id, product.name or "", product.models, product.default_model, product)

    @classmethod
    def configured(cls, product_id: int, config: ProductConfig | None) -> ProductScope:
        """Open mode's product: the config table's, or an open one on the server's models."""
        if config is None:
            return cls(product_id, "", (), None)
        models = tuple(dict.fromkeys([*([config.model] if config.model else []), *config.models]))
        default = config.model or (config.models[0] if config.models else None)
        return cls(product_id, config.name, models, default)

    @property
    def usage_id(self) -> int | None:
        """The id for the usage row (None: one the database cannot hold)."""
        return self.id if storable_product_id(self.id) else None


@dataclass(frozen=True)
class DeploymentScope:
    id: str
    model: str | None  # None: the server's default
    record: Deployment | None = None  # the database's deployment; None when configured

    @classmethod
    def configured(cls, deployment_id: str, config: DeploymentConfig | None) -> DeploymentScope:
        """Open mode's deployment: the config table's model, or the server's default."""
        return cls(deployment_id, config.model if config is not None else None)

    @property
    def usage_id(self) -> str | None:
        return self.id if storable_deployment_id(self.id) else None


@dataclass(frozen=True)
class Caller:
    """One request's caller and scope."""

    principal: Principal
    product: ProductScope | None = None
    deployment: DeploymentScope | None = None

    @property
    def billed_account(self) -> Account | None:
        """Who pays: the product's or deployment's owner, else the caller's acting account
        (None in open mode)."""
        product = self.product.record if self.product is not None else None
        deployment = self.deployment.record if self.deployment is not None else None
        return self.principal.billed_account(product, deployment)

    @property
    def key_prefix(self) -> str:
        """For log lines: the key's visible prefix, never the key."""
        key = self.principal.key
        return key.prefix if key is not None else "-"

    def usage_record(self, *, request_id: str, model: str, dialect: str, prompt_tokens: int,
                     completion_tokens: int, estimated_cost: float, latency_s: float,
                     status: UsageStatus) -> UsageRecord:
        """The request's usage row, billed as `billed_account` says."""
        account = self.billed_account
        key = self.principal.key
        return UsageRecord(
            request_id=request_id, model=model, dialect=dialect, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, latency_s=latency_s, status=status,
            estimated_cost=estimated_cost,
            key_id=key.id if key is not None else None,
            account_id=account.id if account is not None else None,
            product_id=self.product.usage_id if self.product is not None else None,
            deployment_id=self.deployment.usage_id if self.deployment is not None else None,
        )
