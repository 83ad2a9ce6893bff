"""settings.py: one engine config type from file, environment and flags, merged field by field
in that order of precedence and validated by the engine's own checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatforge.engine.config import EngineConfig
from chatforge.settings import load_settings


def test_engine_settings_are_the_engine_config(tmp_path, monkeypatch):
    config = tmp_path / "chatforge.toml"
    config.write_text("[engine]\nkv_cache_mb = 64\nmax_num_seqs = 4\nmax_waiting = 9\n")
    monkeypatch.setenv("CHATFORGE_ENGINE__MAX_NUM_SEQS", "8")
    settings = load_settings(config, engine={"threads": 2})
    assert isinstance(settings.engine, EngineConfig)
    # file < environment < flags, each for the fields it names
    assert (settings.engine.kv_cache_mb, settings.engine.max_waiting) == (64, 9)
    assert settings.engine.max_num_seqs == 8
    assert settings.engine.threads == 2


@pytest.mark.parametrize(
    "engine, field",
    [
        ({"max_num_seqs": 64, "max_num_batched_tokens": 32}, "engine"),  # EngineConfig.__post_init__
        ({"weights": "int3"}, "engine"),
        ({"kv_cache_mb": 0}, "engine"),
        ({"no_such_knob": 1}, "engine.no_such_knob"),
    ],
)
def test_a_bad_engine_setting_is_refused_at_load(engine, field):
    with pytest.raises(ValidationError) as info:
        load_settings(engine=engine)
    assert ".".join(str(p) for p in info.value.errors()[0]["loc"]) == field


def test_a_negative_price_is_refused():
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        load_settings(prices={"smollm2": {"input": -1.0}})


def test_the_engine_config_is_frozen():
    with pytest.raises(AttributeError):
        load_settings().engine.threads = 3  # type: ignore[misc]


def test_operations_settings_from_file_and_environment(tmp_path, monkeypatch):
    config = tmp_path / "chatforge.toml"
    config.write_text('[limits]\nmax_messages = 10\n[server]\ncors_allow_origins = ["https://a.example"]\n'
                      '[storage]\nredis_unavailable = "local"\n')
    monkeypatch.setenv("CHATFORGE_SERVER__DRAIN_TIMEOUT_S", "5")
    settings = load_settings(config)
    assert (settings.limits.max_messages, settings.limits.max_body_bytes) == (10, 8 * 1024 * 1024)
    assert (settings.server.drain_timeout_s, settings.server.cors_allow_origins) == (5.0, ["https://a.example"])
    assert settings.storage.redis_unavailable == "local"


@pytest.mark.parametrize("section, fields", [("storage", {"redis_unavailable": "ignore"}),
                                             ("limits", {"max_json_depth": 0}), ("server", {"stream_buffer_bytes": 10})])
def test_a_bad_operations_setting_is_refused_at_load(section, fields):
    with pytest.raises(ValidationError) as info:
        load_settings(**{section: fields})
    assert info.value.errors()[0]["loc"][0] == section
