"""Typed errors the engine raises to its callers (the service maps them to each dialect)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class EngineOverloadedError(EngineError):
    """The waiting queue is full: the caller should answer 503/429 and let the client retry."""


class PromptTooLongError(EngineError):
    """The prompt (plus the tokens it must at least generate) does not fit the context or the KV pool."""

    def __init__(self, message: str, *, prompt_tokens: int, max_prompt_tokens: int):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_prompt_tokens = max_prompt_tokens  # the most this engine accepts for this request


class DuplicateRequestError(EngineError):
    """A request id that is already in flight."""


class EngineDeadError(EngineError):
    """The engine loop stopped (shut down, or steps kept failing); no request can be served."""


class StepFailedError(EngineError):
    """A model step raised. Every request in that step was ended (its blocks freed); the engine
    goes on serving the others. `request_ids`: the requests that were ended."""

    def __init__(self, message: str, *, request_ids: list[str]):
        super().__init__(message)
        self.request_ids = request_ids


class InvalidRequestError(EngineError, ValueError):
    """Token ids outside the vocabulary, an empty prompt, or more completions than the engine runs."""

    param: str | None = None  # the request's field at fault, when one is


class RequestLostError(EngineError):
    """The engine lost a request after some of its outputs were delivered (a remote engine whose
    node went away mid-generation). Nothing of it can be resumed, but the request can be run
    again from the start."""
