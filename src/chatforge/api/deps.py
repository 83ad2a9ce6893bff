"""Who is calling, and under which product or deployment: the platform's guards as FastAPI
dependencies, so that each dialect route declares one and holds no auth logic.

Headers: `Authorization: Bearer <key>` on the OpenAI, DeepInfra and Infomaniak routes, `x-api-key`
on EGP's; `x-selected-account-id` picks which of the key's accounts acts (a foreign one is 403).

Open mode is the platform's decision, made per request: while no key exists and the server
listens on loopback (or `allow_open_remote` is set), every request runs as an anonymous caller,
whatever key it sends. Each request in open mode costs one indexed `LIMIT 1` query; the first
key the platform sees ends open mode for the life of the process, so the usual request pays
nothing for the check.

Products and deployments: the database is the source of truth (owner, models, default model,
limits). In open mode an id that the database does not know falls back to the config tables
(`settings.products`, `settings.deployments`) and then to the server's default model, so the
providers' documented examples (product 10775, any deployment id) run as written. With keys, an
unknown id is 404 and another account's id is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from chatforge.platform import accounts
from chatforge.platform import errors as platform_errors
from chatforge.platform.accounts import Deployment, Product
from chatforge.platform.gate import Platform, Principal
from chatforge.service.catalog import ModelCatalog
from chatforge.service.errors import ChatError, ModelNotFoundError
from chatforge.settings import Settings

# The ids the database can hold: products.id is a 32-bit INTEGER, deployments.id a VARCHAR(200)
# (PostgreSQL refuses NUL in text). Anything else cannot exist there and must not reach it, as a
# query parameter or in a usage row: open mode accepts such ids, and meters them without one.
MAX_PRODUCT_ID = 2**31 - 1
MAX_DEPLOYMENT_ID_CHARS = 200


def storable_product_id(product_id: int) -> bool:
    return 1 <= product_id <= MAX_PRODUCT_ID


def storable_deployment_id(deployment_id: str) -> bool:
    return len(deployment_id) <= MAX_DEPLOYMENT_ID_CHARS and "\x00" not in deployment_id


class ProductNotFoundError(ChatError):
    status = 404
    code = "product_not_found"


class DeploymentNotFoundError(ChatError):
    status = 404
    code = "deployment_not_found"


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

    def model_for(self, requested: str | None, catalog: ModelCatalog) -> str | None:
        """The model this request runs on: the product's default when none was named."""
        if requested is None:
            return self.default_model
        wanted = catalog.canonical_id(requested)  # ModelNotFoundError for an unknown name
        if self.models and not any(m in catalog and catalog.canonical_id(m) == wanted for m in self.models):
            raise ModelNotFoundError(f"The model `{requested}` is not offered by product {self.id}.", param="model")
        return requested

    def model_names(self, catalog: ModelCatalog) -> list[str]:
        return list(self.models) or [m.model_id for m in catalog.models]

    @property
    def usage_id(self) -> int | None:
        """The id for the usage row (None: one the database cannot hold)."""
        return self.id if storable_product_id(self.id) else None


@dataclass(frozen=True)
class DeploymentScope:
    id: str
    model: str | None  # None: the server's default
    record: Deployment | None = None  # the database's deployment; None when configured

    @property
    def usage_id(self) -> str | None:
        return self.id if storable_deployment_id(self.id) else None


@dataclass(frozen=True)
class Caller:
    """One request's caller and scope, as the dialect routes and `Serving` see it."""

    principal: Principal
    product: ProductScope | None = None
    deployment: DeploymentScope | None = None

    def model_for(self, requested: str | None, catalog: ModelCatalog) -> str | None:
        """The model to run: the requested one if the scope offers it, else the scope's own."""
        if self.product is not None:
            return self.product.model_for(requested, catalog)
        if self.deployment is not None:
            return self.deployment.model
        return requested


def configured_product(settings: Settings, product_id: int) -> ProductScope:
    """Open mode's product: the config table's, or an open one on the server's models."""
    config = settings.products.get(product_id)
    if config is None:
        return ProductScope(product_id, "", (), None)
    models = tuple(dict.fromkeys([*([config.model] if config.model else []), *config.models]))
    default = config.model or (config.models[0] if config.models else None)
    return ProductScope(product_id, config.name, models, default)


def configured_deployment(settings: Settings, deployment_id: str) -> DeploymentScope:
    """Open mode's deployment: the config table's model, or the server's default."""
    config = settings.deployments.get(deployment_id)
    return DeploymentScope(deployment_id, config.model if config is not None else None)


async def resolve_product(platform: Platform, settings: Settings, principal: Principal, product_id: int) -> ProductScope:
    if storable_product_id(product_id):
        try:
            return ProductScope.of(await platform.resolve_product(principal, product_id))
        except platform_errors.ProductNotFoundError:
            pass
    if principal.key is None:
        return configured_product(settings, product_id)
    raise ProductNotFoundError(f"Product {product_id} does not exist.", param="product_id")


async def resolve_deployment(platform: Platform, settings: Settings, principal: Principal,
                             deployment_id: str) -> DeploymentScope:
    if storable_deployment_id(deployment_id):
        try:
            found = await platform.resolve_deployment(principal, deployment_id)
            return DeploymentScope(found.id, found.model, found)
        except platform_errors.DeploymentNotFoundError:
            pass
    if principal.key is None:
        return configured_deployment(settings, deployment_id)
    raise DeploymentNotFoundError(f"Model deployment {deployment_id!r} does not exist.", param="model_deployment_id")


async def listed_products(platform: Platform, settings: Settings, principal: Principal) -> list[ProductScope]:
    """The products the caller may use, by id; in open mode the configured ones too."""
    async with platform.engine.connect() as conn:
        stored = await accounts.list_products(conn)
    scopes = {p.id: ProductScope.of(p) for p in stored if principal.may_use(p.account)}
    if principal.key is None:
        for product_id in settings.products:
            scopes.setdefault(product_id, configured_product(settings, product_id))
    return [scopes[i] for i in sorted(scopes)]


async def listed_deployments(platform: Platform, settings: Settings, principal: Principal) -> list[DeploymentScope]:
    """The deployments the caller may use, by id; in open mode the configured ones too."""
    async with platform.engine.connect() as conn:
        stored = await accounts.list_deployments(conn)
    scopes = {d.id: DeploymentScope(d.id, d.model, d) for d in stored if principal.may_use(d.account)}
    if principal.key is None:
        for deployment_id in settings.deployments:
            scopes.setdefault(deployment_id, configured_deployment(settings, deployment_id))
    return [scopes[i] for i in sorted(scopes)]


# -- FastAPI dependencies ----------------------------------------------------------------------
Authorization = Annotated[str | None, Header(description="`Bearer <API key>`; required once keys exist")]
ApiKey = Annotated[str | None, Header(alias="x-api-key", description="the API key; required once keys exist")]
SelectedAccount = Annotated[str | None, Header(alias="x-selected-account-id",
                                                description="which of the key's accounts acts and pays")]


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def bearer_principal(request: Request, authorization: Authorization = None,
                           x_selected_account_id: SelectedAccount = None) -> Principal:
    return await request.app.state.platform.authenticate(bearer_token(authorization), x_selected_account_id)


async def api_key_principal(request: Request, x_api_key: ApiKey = None,
                            x_selected_account_id: SelectedAccount = None) -> Principal:
    return await request.app.state.platform.authenticate(x_api_key, x_selected_account_id)


BearerPrincipal = Annotated[Principal, Depends(bearer_principal)]
ApiKeyPrincipal = Annotated[Principal, Depends(api_key_principal)]


async def bearer_caller(principal: BearerPrincipal) -> Caller:
    return Caller(principal)


async def product_caller(request: Request, product_id: int, principal: BearerPrincipal) -> Caller:
    state = request.app.state
    return Caller(principal, product=await resolve_product(state.platform, state.settings, principal, product_id))


async def deployment_caller(request: Request, model_deployment_id: str, principal: ApiKeyPrincipal) -> Caller:
    state = request.app.state
    scope = await resolve_deployment(state.platform, state.settings, principal, model_deployment_id)
    return Caller(principal, deployment=scope)


BearerCaller = Annotated[Caller, Depends(bearer_caller)]
ProductCaller = Annotated[Caller, Depends(product_caller)]
DeploymentCaller = Annotated[Caller, Depends(deployment_caller)]
