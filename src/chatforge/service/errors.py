"""Typed errors of the service layer. Each dialect maps them to its own envelope and status;
nothing upstream matches on message text."""

from __future__ import annotations

from chatforge.errors import ChatforgeError


class ChatError(ChatforgeError):
    """Base of the service's errors: `message` is safe to show the caller; `param` names the
    offending field."""

    status = 400
    code = "invalid_request_error"


class InvalidRequestError(ChatError):
    pass


class ModelNotFoundError(ChatError):
    status = 404
    code = "model_not_found"


class ContextLengthExceededError(ChatError):
    code = "context_length_exceeded"

    def __init__(self, message: str, *, prompt_tokens: int, context_length: int, param: str | None = "messages"):
        super().__init__(message, param=param)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class OverloadedError(ChatError):
    """The engine's queue is full: try again shortly."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str = "the server is overloaded; retry shortly", *, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class EngineUnavailableError(ChatError):
    """The engine stopped (shutdown or a failure): nothing can be served until it is back."""

    status = 503
    code = "engine_unavailable"


class GenerationFailedError(ChatError):
    """Producing this response failed (a bug, not the caller's doing: a model step raised, or
    something after the stream began); the request was ended and the server goes on."""

    status = 500
    code = "internal_error"


class ConstraintFailedError(ChatError):
    """The grammar that constrained the output refused the model's token (its per-step work
    limit, or a bug): the request was ended. `message` is the grammar's."""

    status = 500
    code = "grammar_error"
