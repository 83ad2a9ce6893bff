"""chatforge's settings: the only module that reads the environment or the config file.

Precedence: command-line flags > `CHATFORGE_*` environment variables > the TOML config file >
defaults. Built once at start-up; components copy the fields they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from chatforge.engine.config import EngineConfig


class ModelPrice(BaseModel):
    """USD per million tokens, for `usage.estimated_cost`. The one price type: the catalog
    holds it per model, the service computes each request's cost with it once, and the usage
    row stores that same figure."""

    model_config = ConfigDict(frozen=True)

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class ProductConfig(BaseModel):
    """An Infomaniak product (integer id in `/1/llm/{id}`, `/1/ai/{id}/...`) and its models."""

    name: str = ""
    model: str | None = Field(default=None, description="the default model; None = the first of models, else the server's")
    models: list[str] = Field(default_factory=list, description="the models it may use; empty = every served model")


class DeploymentConfig(BaseModel):
    """An EGP model deployment (string id in `/v4/models/{id}/...`) and the model behind it."""

    model: str | None = Field(default=None, description="None = the server's default model")


class ModelEntry(BaseModel):
    """One served model: where it is, the names it answers to, its chat template, its KV pool.
    In the config file, a `[[models]]` table; a bare string in `models` is a `path` alone."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(default=None, description="a .gguf file, a Hugging Face folder, or a packaged model's id or alias; None = the bundled default")
    id: str | None = Field(default=None, description="the id it is served as; default: the file's stem, the folder's name or the packaged id")
    aliases: list[str] = Field(default_factory=list, description="other names requests may use for it (e.g. a provider's model name)")
    chat_template: str | None = Field(default=None, description="a named template (chatml, gemma, llama2, llama3, mistral, qwen) or a Jinja file; default: the model's own")
    kv_cache_mb: int | None = Field(default=None, ge=1, description="this model's KV pool; default: its share of engine.kv_cache_mb")


_MiB = 1024 * 1024


class LimitsConfig(BaseModel):
    """Bounds on one request (`[limits]`, `CHATFORGE_LIMITS__<FIELD>`). Each refusal is a 4xx in
    the route's own dialect envelope; the timeouts end the request and free what it held."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(default=8 * _MiB, ge=1, description="a longer body is 413, refused while it is read")
    max_json_depth: int = Field(default=64, ge=1, description="deeper nesting of arrays and objects is 400")
    max_messages: int = Field(default=2048, ge=1, description="more messages (or prompts) is 400 (OpenAI's own bound)")
    max_prompt_chars: int = Field(default=1_000_000, ge=1, description="more text in all messages together is 400, before tokenizing")
    request_timeout_s: float = Field(default=600.0, gt=0, description="from admission: the request ends with finish reason length")
    queue_timeout_s: float = Field(default=120.0, gt=0, description="until the engine's first output (queue + prefill): 503 after it")


class ServerConfig(BaseModel):
    """The HTTP server and its life cycle (`[server]`, `CHATFORGE_SERVER__<FIELD>`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drain_timeout_s: float = Field(default=30.0, ge=0, description="on SIGTERM/SIGINT: how long admitted requests may still run")
    header_timeout_s: float = Field(default=10.0, gt=0, description="a request's line and headers must arrive within this")
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line and headers together; more is 431")
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="an idle keep-alive connection is closed after this")
    stream_stall_timeout_s: float = Field(default=30.0, gt=0, description="a stream whose reader takes nothing for this long is aborted")
    stream_buffer_bytes: int | None = Field(
        default=None, ge=4096, description="per connection, what a slow reader may hold: the write buffer's high-water "
                                           "mark and the kernel's send buffer (None: asyncio's 64 KiB and the kernel's autotuning)")
    engine_step_timeout_s: float = Field(default=60.0, gt=0, description="an engine step running longer marks the engine unhealthy")
    cors_allow_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty: CORS off")


class StorageConfig(BaseModel):
    """What happens when the database or Redis goes away (`[storage]`, `CHATFORGE_STORAGE__<FIELD>`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    usage_buffer_rows: int = Field(default=10_000, ge=1, description="usage rows held while the database is unreachable")
    # "refuse": limited requests get 503 while Redis is down (the limits hold across gateways);
    # "local": each gateway enforces the limits alone until Redis returns (up to N x the budget).
    redis_unavailable: Literal["refuse", "local"] = "refuse"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATFORGE_", env_nested_delimiter="__", extra="forbid")

    models: list[str | ModelEntry] = Field(default_factory=list, description="paths or ids, or [[models]] entries; empty = the bundled default")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    database_url: str = "sqlite:///./chatforge.db"
    redis_url: str | None = None
    allow_open_remote: bool = Field(
        default=False, description="serve without keys on a non-loopback address (dangerous)"
    )
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="model id -> price")
    # The engine's own config dataclass, validated here (its __post_init__ included): one type,
    # no mirror to keep in step. `[engine]` in TOML, CHATFORGE_ENGINE__<FIELD> in the environment.
    engine: EngineConfig = Field(default_factory=EngineConfig)
    # TOML and env keys are strings; pydantic turns `[products.10775]` into the int 10775.
    products: dict[int, ProductConfig] = Field(default_factory=dict, description="Infomaniak product id -> config")
    deployments: dict[str, DeploymentConfig] = Field(default_factory=dict, description="EGP deployment id -> config")
    log_level: str = "info"
    log_prompts: bool = False  # never log prompt or completion text unless asked
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    def model_entries(self) -> list[ModelEntry]:
        """`models` as entries (a bare string is a path); the bundled default when empty."""
        return [ModelEntry(path=m) if isinstance(m, str) else m for m in self.models] or [ModelEntry()]

    def with_model_flags(self, chat_template: str | None, names: list[str] | None) -> Settings:
        """The command line's --chat-template and --served-model-name (first name the id, the
        others aliases) applied to the one model served; ValueError when there are several."""
        if chat_template is None and not names:
            return self
        entries = self.model_entries()
        if len(entries) != 1:
            raise ValueError("--chat-template and --served-model-name apply to one model; "
                             "with several, set chat_template, id and aliases per [[models]] entry in the config file")
        update: dict[str, Any] = {} if chat_template is None else {"chat_template": chat_template}
        if names:
            update.update(id=names[0], aliases=[*entries[0].aliases, *names[1:]])
        return self.model_copy(update={"models": [entries[0].model_copy(update=update)]})

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
