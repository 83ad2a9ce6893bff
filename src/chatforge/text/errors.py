"""Typed errors of the text layer; the service maps them to each dialect's error envelope."""

from __future__ import annotations


class TokenizerError(ValueError):
    """A tokenizer that cannot be built from the files or metadata given, or ids outside its vocabulary."""


class ChatTemplateError(ValueError):
    """A chat template that cannot be compiled or rendered.

    `kind` says why, so callers can word their answer:
    - "syntax": the template does not compile;
    - "raised": the template called `raise_exception(message)` (it rejects these messages);
    - "security": the template reached for something the sandbox forbids (`''.__class__`,
      `list.append`, ...); nothing forbidden ran;
    - "limit": rendering ran past its time or size limits;
    - "input": the messages, tools or documents are not plain JSON-like data;
    - "render": any other failure while rendering (an undefined name, a type error, ...).
    """

    def __init__(self, message: str, kind: str = "render"):
        super().__init__(message)
        self.message = message
        self.kind = kind
