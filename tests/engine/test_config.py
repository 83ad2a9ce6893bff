"""EngineConfig refuses settings the engine could not run with."""

from __future__ import annotations

import pytest

from chatforge.engine.config import EngineConfig


@pytest.mark.parametrize(
    "bad",
    [
        {"block_size": 0},
        {"num_kv_blocks": 0},
        {"max_num_seqs": 0},
        {"max_waiting": -1},
        {"max_num_seqs": 64, "max_num_batched_tokens": 32},  # the newest sequences would starve
        {"max_model_len": 1},
        {"threads": 0},
        {"dtype": "int8"},
        {"weights": "q4"},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        EngineConfig(**bad)


def test_defaults_are_valid():
    config = EngineConfig()
    assert (config.block_size, config.max_num_seqs, config.max_num_batched_tokens, config.weights) == (16, 64, 512, "native")
