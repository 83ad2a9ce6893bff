"""Typed errors of the model layer, so callers can tell a bad model from a bad call."""

from __future__ import annotations


class ModelError(ValueError):
    """A model's files or configuration cannot be used."""


class ModelConfigError(ModelError):
    """config.json / GGUF metadata is missing a field or holds a value chatforge cannot serve."""


class UnsupportedArchitectureError(ModelError):
    """The model's architecture is not one chatforge implements."""


class WeightsMismatchError(ModelError):
    """The weight files miss tensors the model needs, hold ones it does not know, or have wrong shapes."""


class AttentionMetadataError(ValueError):
    """The batch description handed to `AttentionMetadata.build` is inconsistent."""
