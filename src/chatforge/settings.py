"""chatforge's settings: the only module that reads the environment or the config file.

Precedence: command-line flags > `CHATFORGE_*` environment variables > the TOML config file >
defaults. Built once at start-up; components copy the fields they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ModelPrice(BaseModel):
    """USD per million tokens, for `usage.estimated_cost`."""

    input: float = 0.0
    output: float = 0.0


class ProductConfig(BaseModel):
    """An Infomaniak product (integer id in `/1/llm/{id}`, `/1/ai/{id}/...`) and its models."""

    name: str = ""
    model: str | None = Field(default=None, description="the default model; None = the first of models, else the server's")
    models: list[str] = Field(default_factory=list, description="the models it may use; empty = every served model")


class DeploymentConfig(BaseModel):
    """An EGP model deployment (string id in `/v4/models/{id}/...`) and the model behind it."""

    model: str | None = Field(default=None, description="None = the server's default model")


class EngineSettings(BaseModel):
    """Mirrors `engine.config.EngineConfig`; see there for what each knob does."""

    threads: int | None = Field(default=None, ge=1, description="compute threads; None = the CPUs the process may use")
    device: str | None = Field(default=None, description="cpu | cuda; None = cuda when present")
    dtype: str | None = Field(default=None, description="float32 | bfloat16 | float16; None = per device")
    block_size: int = Field(default=16, ge=1)
    num_kv_blocks: int | None = Field(default=None, ge=1)
    kv_cache_mb: int = Field(default=512, ge=1, description="KV pool size when num_kv_blocks is unset")
    max_num_seqs: int = Field(default=64, ge=1)
    max_num_batched_tokens: int = Field(default=512, ge=16)
    max_waiting: int = Field(default=256, ge=0, description="queued requests before 503")
    max_model_len: int | None = Field(default=None, ge=2)
    enable_prefix_caching: bool = True
    weights: str = Field(default="native", pattern="^(native|exact)$", description="native (chatforge's kernels) | exact (torch float32)")
    kernel_cache_dir: str | None = Field(default=None, description="where the native kernels are built; None = ~/.cache/chatforge")
    compiler: str = Field(default="cc", description="the C compiler that builds the native kernels")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATFORGE_", env_nested_delimiter="__", extra="forbid")

    models: list[str] = Field(default_factory=list, description="paths or ids; empty = the bundled default")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    database_url: str = "sqlite:///./chatforge.db"
    redis_url: str | None = None
    allow_open_remote: bool = Field(
        default=False, description="serve without keys on a non-loopback address (dangerous)"
    )
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="model id -> price")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    # TOML and env keys are strings; pydantic turns `[products.10775]` into the int 10775.
    products: dict[int, ProductConfig] = Field(default_factory=dict, description="Infomaniak product id -> config")
    deployments: dict[str, DeploymentConfig] = Field(default_factory=dict, description="EGP deployment id -> config")
    log_level: str = "info"
    log_prompts: bool = False  # never log prompt or completion text unless asked
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flags (init) > CHATFORGE_* env > the TOML file named by `load_settings`.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Settings from flags (None values are 'not given'), the environment, then `config_file`."""
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {Path(config_file).resolve()}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    given = {k: v for k, v in flags.items() if v is not None and v != []}
    return _FromFile(**given)
