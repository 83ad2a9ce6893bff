"""The platform's facade for the API: who is calling, what they may use, whether they may run
now, and what it cost. It knows no HTTP: each dialect reads its own headers, calls these in order
(authenticate -> product_scope or deployment_scope -> admit -> ... -> settle, record_usage) and
maps the typed errors of `errors.py` to its own envelope. The API never opens a connection itself.

Open mode: with no key in the database and the server reachable only on loopback (or the
operator's explicit `allow_remote`), every request runs as an anonymous principal, whatever key
it sends. The first key created ends open mode for good: once seen, the platform never asks again.

Keys are looked up on every request, so a key revoked or expired is refused by every gateway from
its next request on, unless `key_cache_s` lets a gateway (`serve --gateway`: 2 s) trust a lookup
for that long (key_cache.py): a revoked key is then refused everywhere within that time (expiry
is still checked on every request). When the database or Redis is unreachable the platform fails
closed (storage.py); the usage rows wait in a bounded buffer (usage_buffer.py).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from chatforge.platform import accounts, keys
from chatforge.platform.accounts import Account, Deployment, Product
from chatforge.platform.db import create_engine, normalize_url
from chatforge.platform.errors import (
    AuthenticationError,
    DeploymentNotFoundError,
    ModelNotAllowedError,
    PermissionDeniedError,
    ProductNotFoundError,
    RateLimiterUnavailableError,
)
from chatforge.platform.key_cache import KeyCache
from chatforge.platform.metering import UsageRecord
from chatforge.platform.migrations import upgrade
from chatforge.platform.rate_limit import Admission, Limit, RateLimiter
from chatforge.platform.rate_limit_failover import FailoverRateLimiter
from chatforge.platform.rate_limit_local import LocalRateLimiter
from chatforge.platform.rate_limit_redis import RedisRateLimiter
from chatforge.platform.storage import StoreHealth, read
from chatforge.platform.usage_buffer import UsageBuffer
from chatforge.platform.scopes import DeploymentScope, ProductScope, storable_deployment_id, storable_product_id
from chatforge.platform.tables import utcnow

if TYPE_CHECKING:
    from chatforge.settings import DeploymentConfig, ProductConfig

log = logging.getLogger(__name__)

_FLUSH_WAIT_S = 5.0


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    key: keys.ApiKey | None  # None in open mode
    account: Account | None  # the acting account: the selected one, else the key's first
    selected: bool = False  # the request named its account (x-selected-account-id)

    def may_use(self, owner: Account) -> bool:
        """A product's or deployment's owner is usable when the key belongs to it and, if the
        request selected an account, it is that one."""
        if self.key is None:
            return True
        if self.selected:
            return owner.id == self.account.id
        return any(a.id == owner.id for a in self.key.accounts)

    def may_use_model(self, names: Iterable[str]) -> bool:
        """A model (by its id and aliases) is usable unless the key's allow-list names none of them."""
        return self.key is None or self.key.models is None or not set(names).isdisjoint(self.key.models)

    def billed_account(self, product: Product | None = None, deployment: Deployment | None = None) -> Account | None:
        """Who pays: the owner of the product or deployment used, else the acting account."""
        if product is not None:
            return product.account
        if deployment is not None:
            return deployment.account
        return self.account


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Platform:
    """Not started when built (no connection made): `await start()` next, or `async with`.
    `products` and `deployments` are the config tables open mode falls back to."""

    def __init__(self, database_url: str, redis_url: str | None = None, *,
                 products: Mapping[int, ProductConfig] | None = None,
                 deployments: Mapping[str, DeploymentConfig] | None = None,
                 usage_buffer_rows: int = 10_000, redis_unavailable: str = "refuse", key_cache_s: float = 0.0,
                 usage_linger_s: float = 0.0) -> None:
        self.database_url = normalize_url(database_url)
        self.redis_url = redis_url
        self.configured_products = dict(products or {})
        self.configured_deployments = dict(deployments or {})
        self.usage_buffer_rows = usage_buffer_rows
        self.usage_linger_s = usage_linger_s
        self.redis_unavailable = redis_unavailable  # "refuse" or "local" (rate_limit_failover.py)
        self.database_health = StoreHealth("database")
        self.redis_health = StoreHealth("redis")
        self.engine: AsyncEngine | None = None
        self.limiter: RateLimiter | None = None
        self.usage: UsageBuffer | None = None
        self._open_allowed = False
        self._keys_seen = False
        self._key_cache = KeyCache(key_cache_s) if key_cache_s > 0 else None  # gateways: key_cache.py

    async def start(self) -> None:
        """Migrate the database, connect, and start the usage buffer's writer."""
        await upgrade(self.database_url)
        if self.redis_url:
            limiter = RedisRateLimiter.from_url(self.redis_url)
            try:
                await limiter.ping()
            except RateLimiterUnavailableError:
                await limiter.close()
                raise
            self.limiter = FailoverRateLimiter(limiter, self.redis_health, fall_back=self.redis_unavailable == "local")
        else:
            self.limiter = LocalRateLimiter()
        self.engine = create_engine(self.database_url)
        self.usage = UsageBuffer(self.engine, self.database_health, capacity=self.usage_buffer_rows,
                                 linger_s=self.usage_linger_s)
        self.usage.start()

    async def close(self, flush_timeout_s: float | None = None) -> None:
        """Write the buffered usage rows (waiting up to `flush_timeout_s` for the database),
        then let go of every connection."""
        if self.usage is not None:
            await self.usage.close(flush_timeout_s)
        if self.limiter is not None:
            await self.limiter.close()
        if self.engine is not None:
            await self.engine.dispose()

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def open_mode(self, listening_on_loopback: bool, allow_remote: bool = False) -> bool:
        """Whether requests need no key: no key exists and the server listens on loopback only
        (or the operator allowed open remote access). The server calls this once at start."""
        self._open_allowed = listening_on_loopback or allow_remote
        return self._open_allowed and not await self._any_key()

    async def authenticate(self, api_key: str | None, selected_account: str | None = None) -> Principal:
        if self._open_allowed and not await self._any_key():
            return Principal(key=None, account=None)
        if not api_key:
            raise AuthenticationError("No API key provided.")
        key = await self._find_key(api_key)
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        state = key.state(utcnow())
        if state != "active":
            raise AuthenticationError(f"This API key is {state}.")
        if selected_account is None:
            return Principal(key=key, account=key.accounts[0])
        for account in key.accounts:
            if account.name == selected_account:
                return Principal(key=key, account=account, selected=True)
        log.info("key %s refused account selection", key.prefix)
        raise PermissionDeniedError("This API key may not act for the selected account.")

    async def product_scope(self, principal: Principal, product_id: int) -> ProductScope:
        """What `principal` may use under `product_id`: the stored product (403 for another
        account's); in open mode, an unknown id is the configured or an open product; with
        keys, an unknown id is ProductNotFoundError."""
        if storable_product_id(product_id):
            try:
                return ProductScope.of(await self.resolve_product(principal, product_id))
            except ProductNotFoundError:
                pass
        if principal.key is None:
            return ProductScope.configured(product_id, self.configured_products.get(product_id))
        raise ProductNotFoundError(f"Product {product_id} does not exist.", param="product_id")

    async def deployment_scope(self, principal: Principal, deployment_id: str) -> DeploymentScope:
        """As `product_scope`, for an EGP deployment."""
        if storable_deployment_id(deployment_id):
            try:
                found = await self.resolve_deployment(principal, deployment_id)
                return DeploymentScope(found.id, found.model, found)
            except DeploymentNotFoundError:
                pass
        if principal.key is None:
            return DeploymentScope.configured(deployment_id, self.configured_deployments.get(deployment_id))
        raise DeploymentNotFoundError(f"Model deployment {deployment_id!r} does not exist.", param="model_deployment_id")

    async def list_products(self, principal: Principal) -> list[ProductScope]:
        """The products the caller may use, by id; in open mode the configured ones too."""
        stored = await self.read(accounts.list_products)
        scopes = {p.id: ProductScope.of(p) for p in stored if principal.may_use(p.account)}
        if principal.key is None:
            for product_id, config in self.configured_products.items():
                scopes.setdefault(product_id, ProductScope.configured(product_id, config))
        return [scopes[i] for i in sorted(scopes)]

    async def list_deployments(self, principal: Principal) -> list[DeploymentScope]:
        """The deployments the caller may use, by id; in open mode the configured ones too."""
        stored = await self.read(accounts.list_deployments)
        scopes = {d.id: DeploymentScope(d.id, d.model, d) for d in stored if principal.may_use(d.account)}
        if principal.key is None:
            for deployment_id, config in self.configured_deployments.items():
                scopes.setdefault(deployment_id, DeploymentScope.configured(deployment_id, config))
        return [scopes[i] for i in sorted(scopes)]

    async def resolve_product(self, principal: Principal, product_id: int) -> Product:
        """The product, if the principal may use it (ProductNotFoundError, PermissionDeniedError)."""
        product = await self.read(lambda conn: accounts.get_product(conn, product_id))
        if not principal.may_use(product.account):
            raise PermissionDeniedError(f"This API key may not use product {product_id}.")
        return product

    async def resolve_deployment(self, principal: Principal, deployment_id: str) -> Deployment:
        deployment = await self.read(lambda conn: accounts.get_deployment(conn, deployment_id))
        if not principal.may_use(deployment.account):
            raise PermissionDeniedError(f"This API key may not use deployment {deployment_id!r}.")
        return deployment

    def check_model(self, principal: Principal, model_id: str, *, aliases: Iterable[str] = (),
                    product: Product | None = None) -> None:
        """ModelNotAllowedError unless the key's allow-list and the product's models both name
        the model, by its id or one of its aliases."""
        names = {model_id, *aliases}
        if not principal.may_use_model(names):
            raise ModelNotAllowedError(f"This API key may not use the model {model_id!r}.")
        if product is not None and names.isdisjoint(product.models):
            raise ModelNotAllowedError(f"Product {product.id} does not offer the model {model_id!r}.")

    async def admit(self, principal: Principal, model_id: str, product: Product | None,
                    prompt_tokens: int, max_tokens: int, *, aliases: Iterable[str] = ()) -> Admission:
        """Check the model, then admit the request under its key's and product's limits,
        reserving prompt_tokens + max_tokens; raises RateLimitedError. Settle the admission
        with the real total once the request ends, however it ends."""
        self.check_model(principal, model_id, aliases=aliases, product=product)
        limits = []
        if principal.key is not None:
            limits.append(Limit("key", str(principal.key.id), principal.key.rpm, principal.key.tpm))
        if product is not None:
            limits.append(Limit("product", str(product.id), product.rpm, product.tpm))
        return await self.limiter.admit(limits, prompt_tokens + max_tokens)

    async def record_usage(self, record: UsageRecord) -> None:
        """Buffer the request's usage row. Never suspends, so it completes even inside a
        cancelled request's `finally`."""
        self.usage.submit(record)

    async def flush_usage(self, timeout_s: float | None = _FLUSH_WAIT_S) -> bool:
        """Wait until every usage row buffered so far is in the database (False when the
        database did not take them within `timeout_s`: it is away, and a read will say so)."""
        return await self.usage.flush(timeout_s)

    async def _find_key(self, api_key: str) -> keys.ApiKey | None:
        cache = self._key_cache
        key = cache.get(api_key) if cache is not None else None
        if key is None:
            key = await self.read(lambda conn: keys.find_key(conn, api_key))
            if key is not None and cache is not None:
                cache.put(api_key, key)
        return key

    async def _any_key(self) -> bool:
        if not self._keys_seen:
            self._keys_seen = await self.read(keys.any_key_exists)
        return self._keys_seen

    async def read(self, work):
        """`work(conn)` on the database; unreachable, it is StorageUnavailableError (503). Every
        read on the request path goes through here."""
        return await read(self.engine, self.database_health, work)
