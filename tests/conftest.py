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
