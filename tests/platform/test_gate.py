"""The facade the dialects call: the 401/403/404 matrix, open mode, model checks, admission."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest

from chatforge.platform import accounts, keys
from chatforge.platform.errors import (
    AuthenticationError,
    DeploymentNotFoundError,
    ModelNotAllowedError,
    PermissionDeniedError,
    ProductNotFoundError,
    RateLimitedError,
    RateLimiterUnavailableError,
)
from chatforge.platform.gate import Platform, is_loopback_host
from chatforge.platform.rate_limit_failover import FailoverRateLimiter
from chatforge.platform.rate_limit_local import LocalRateLimiter
from chatforge.platform.rate_limit_redis import RedisRateLimiter


@pytest.fixture
async def platform(database_url):
    async with Platform(database_url) as started:
        yield started


async def _setup(platform, **key_options):
    """alice and bob; a key of both (alice first); product 1 and deployment "d-bob" of bob;
    product 2 and deployment "d-carol" of carol, whom the key does not belong to."""
    async with platform.engine.begin() as conn:
        for name in ("alice", "bob", "carol"):
            await accounts.create_account(conn, name)
        secret, key = await keys.create_key(conn, ["alice", "bob"], **key_options)
        await accounts.create_product(conn, 1, "bob", ["smollm2", "other"], rpm=50)
        await accounts.create_product(conn, 2, "carol", ["smollm2"])
        await accounts.create_deployment(conn, "d-bob", "bob", "smollm2", {"temperature": 0.2})
        await accounts.create_deployment(conn, "d-carol", "carol", "smollm2")
    return secret, key


async def test_authentication_matrix(platform, caplog):
    caplog.set_level(logging.DEBUG)
    secret, key = await _setup(platform)
    assert await platform.open_mode(listening_on_loopback=True) is False

    wrong = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    for presented, message in [(None, "No API key provided."), ("", "No API key provided."),
                               ("sk-whatever", "Incorrect API key provided."), (wrong, "Incorrect API key provided.")]:
        with pytest.raises(AuthenticationError) as refused:
            await platform.authenticate(presented, None)
        assert (refused.value.status, refused.value.message) == (401, message)

    principal = await platform.authenticate(secret, None)
    assert (principal.key, principal.account.name, principal.selected) == (key, "alice", False)
    chosen = await platform.authenticate(secret, "bob")
    assert (chosen.account.name, chosen.selected) == ("bob", True)
    for foreign in ("carol", "nobody"):
        with pytest.raises(PermissionDeniedError) as denied:
            await platform.authenticate(secret, foreign)
        assert denied.value.status == 403

    async with platform.engine.begin() as conn:
        await keys.revoke_key(conn, key.prefix)
    with pytest.raises(AuthenticationError, match="This API key is revoked."):
        await platform.authenticate(secret, None)
    assert key.prefix in caplog.text  # the logs name keys by prefix only
    assert secret not in caplog.text and secret.split("_")[1] not in caplog.text


async def test_expired_key_is_refused(platform):
    async with platform.engine.begin() as conn:
        await accounts.create_account(conn, "alice")
        secret, _ = await keys.create_key(conn, ["alice"], expires_at=datetime.now(timezone.utc) + timedelta(seconds=0.5))
    assert (await platform.authenticate(secret, None)).account.name == "alice"
    await asyncio.sleep(0.6)
    with pytest.raises(AuthenticationError, match="This API key is expired."):
        await platform.authenticate(secret, None)


async def test_products_and_deployments_of_other_accounts_are_403_and_unknown_ones_404(platform):
    secret, _ = await _setup(platform)
    principal = await platform.authenticate(secret, None)  # acting as alice, member of bob too

    product = await platform.resolve_product(principal, 1)
    assert (product.id, product.account.name) == (1, "bob")
    assert principal.billed_account(product=product).name == "bob"
    deployment = await platform.resolve_deployment(principal, "d-bob")
    assert (deployment.model, deployment.parameters) == ("smollm2", {"temperature": 0.2})
    assert principal.billed_account(deployment=deployment).name == "bob"
    assert principal.billed_account().name == "alice"

    with pytest.raises(PermissionDeniedError, match="may not use product 2"):
        await platform.resolve_product(principal, 2)
    with pytest.raises(PermissionDeniedError, match="may not use deployment 'd-carol'"):
        await platform.resolve_deployment(principal, "d-carol")
    with pytest.raises(ProductNotFoundError) as missing:
        await platform.resolve_product(principal, 999)
    assert missing.value.status == 404
    with pytest.raises(DeploymentNotFoundError):
        await platform.resolve_deployment(principal, "nope")

    # having chosen alice explicitly, bob's things are off limits
    as_alice = await platform.authenticate(secret, "alice")
    with pytest.raises(PermissionDeniedError):
        await platform.resolve_product(as_alice, 1)
    with pytest.raises(PermissionDeniedError):
        await platform.resolve_deployment(as_alice, "d-bob")
    as_bob = await platform.authenticate(secret, "bob")
    assert (await platform.resolve_product(as_bob, 1)).id == 1


async def test_model_allow_lists(platform):
    secret, _ = await _setup(platform, models=["smollm2", "other"])
    principal = await platform.authenticate(secret, None)
    product = await platform.resolve_product(principal, 1)
    platform.check_model(principal, "smollm2", product=product)
    platform.check_model(principal, "HuggingFaceTB/SmolLM2-135M-Instruct", aliases=["smollm2"])
    with pytest.raises(ModelNotAllowedError, match="This API key may not use the model 'mixtral'") as denied:
        platform.check_model(principal, "mixtral")
    assert (denied.value.status, denied.value.code) == (403, "model_not_allowed")

    async with platform.engine.begin() as conn:
        await accounts.create_product(conn, 3, "alice", ["third"])
        unrestricted, _ = await keys.create_key(conn, ["alice"])
    anyone = await platform.authenticate(unrestricted, None)
    platform.check_model(anyone, "mixtral")
    with pytest.raises(ModelNotAllowedError, match="Product 3 does not offer the model 'smollm2'"):
        platform.check_model(anyone, "smollm2", product=await platform.resolve_product(anyone, 3))
    with pytest.raises(ModelNotAllowedError):
        await platform.admit(anyone, "smollm2", await platform.resolve_product(anyone, 3), 5, 5)


async def test_open_mode_only_without_keys_on_loopback(platform):
    assert await platform.open_mode(listening_on_loopback=False) is False
    with pytest.raises(AuthenticationError):
        await platform.authenticate(None, None)
    assert await platform.open_mode(listening_on_loopback=False, allow_remote=True) is True
    assert await platform.open_mode(listening_on_loopback=True) is True
    for presented in (None, "sk-anything"):
        anonymous = await platform.authenticate(presented, None)
        assert (anonymous.key, anonymous.account) == (None, None)
    async with platform.engine.begin() as conn:
        await accounts.create_account(conn, "alice")
        await accounts.create_product(conn, 5, "alice", ["smollm2"], rpm=1)
    anonymous = await platform.authenticate(None, None)
    assert (await platform.resolve_product(anonymous, 5)).id == 5
    await platform.admit(anonymous, "smollm2", await platform.resolve_product(anonymous, 5), 1, 1)
    with pytest.raises(RateLimitedError):  # products keep their limits in open mode
        await platform.admit(anonymous, "smollm2", await platform.resolve_product(anonymous, 5), 1, 1)

    async with platform.engine.begin() as conn:
        secret, _ = await keys.create_key(conn, ["alice"])
    with pytest.raises(AuthenticationError):  # the first key ends open mode
        await platform.authenticate(None, None)
    assert (await platform.authenticate(secret, None)).account.name == "alice"
    assert await platform.open_mode(listening_on_loopback=True) is False


async def test_admission_applies_key_and_product_limits(platform):
    secret, _ = await _setup(platform, rpm=3, tpm=1000)
    principal = await platform.authenticate(secret, None)
    product = await platform.resolve_product(principal, 1)  # rpm 50
    admission = await platform.admit(principal, "smollm2", product, prompt_tokens=100, max_tokens=200)
    assert admission.reserved_tokens == 300
    assert admission.headers["x-ratelimit-remaining-requests"] == "2"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "700"
    await admission.settle(150)
    second = await platform.admit(principal, "smollm2", None, prompt_tokens=100, max_tokens=100)
    assert second.headers["x-ratelimit-remaining-tokens"] == "650"
    await platform.admit(principal, "smollm2", None, 1, 1)
    with pytest.raises(RateLimitedError) as refused:
        await platform.admit(principal, "smollm2", None, 1, 1)
    assert refused.value.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.value.headers["Retry-After"] == "60"


async def test_redis_url_selects_the_shared_limiter(database_url, redis_url, unreachable_redis_url):
    async with Platform(database_url, redis_url=redis_url) as shared:
        assert isinstance(shared.limiter, FailoverRateLimiter) and isinstance(shared.limiter.shared, RedisRateLimiter)
        assert shared.limiter.local is None  # storage.redis_unavailable = "refuse": no fallback
    async with Platform(database_url) as alone:
        assert isinstance(alone.limiter, LocalRateLimiter)
    with pytest.raises(RateLimiterUnavailableError, match=r"Cannot reach Redis \(ConnectionError\)\."):
        await Platform(database_url, redis_url=unreachable_redis_url).start()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("example.com", False)],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback
