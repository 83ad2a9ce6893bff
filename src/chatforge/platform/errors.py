"""The platform's typed errors. Each carries the HTTP status a dialect should answer with and a
short machine code; the dialects wrap them in their own envelopes. Messages never contain a key,
a prompt or a completion."""

from __future__ import annotations

from chatforge.errors import ChatforgeError


class PlatformError(ChatforgeError):
    """Base of every error the platform raises on purpose."""

    status: int = 500
    code: str = "platform_error"


class AuthenticationError(PlatformError):
    """No key, an unknown, malformed, expired or revoked key."""

    status = 401
    code = "invalid_api_key"


class PermissionDeniedError(PlatformError):
    """A valid key asking for an account, product, deployment or model it may not use."""

    status = 403
    code = "permission_denied"


class ModelNotAllowedError(PermissionDeniedError):
    code = "model_not_allowed"


class NotFoundError(PlatformError):
    status = 404
    code = "not_found"


class AccountNotFoundError(NotFoundError):
    code = "account_not_found"


class KeyNotFoundError(NotFoundError):
    code = "key_not_found"


class ProductNotFoundError(NotFoundError):
    code = "product_not_found"


class DeploymentNotFoundError(NotFoundError):
    code = "deployment_not_found"


class AlreadyExistsError(PlatformError):
    """Creating an account, product or deployment whose name or id is taken."""

    status = 409
    code = "already_exists"


class InvalidInputError(PlatformError, ValueError):
    """An administrative call with a bad value: a URL, a limit, a date, an empty list."""

    status = 400
    code = "invalid_input"


class RateLimiterUnavailableError(PlatformError):
    """The shared rate-limit store (Redis) cannot be reached: refuse rather than run unmetered."""

    status = 503
    code = "rate_limiter_unavailable"

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class RateLimitedError(PlatformError):
    """Admission refused: one of the request's rate-limit scopes is exhausted.

    `retry_after` is the seconds until this same request would be admitted if nothing else
    arrived; `headers` holds `Retry-After` and the `x-ratelimit-*` headers to send back.
    """

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.retry_after = retry_after


class StorageUnavailableError(PlatformError):
    """The database cannot be reached: nobody can be authenticated, so nothing is admitted
    (fail closed; never open mode, never a 500)."""

    status = 503
    code = "storage_unavailable"

    def __init__(self, message: str = "The service's database is unavailable; retry shortly.", retry_after: int = 2):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
