"""The engine's settings, validated once at start-up and copied down into each component.

This dataclass is also the `[engine]` table of chatforge's settings (`settings.Settings.engine`):
pydantic validates it by its annotations and runs `__post_init__`, so the checks live here once."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    # The KV pool: a block count, or else as many blocks as fit in kv_cache_mb MiB.
    num_kv_blocks: int | None = None
    kv_cache_mb: int = 512
    max_num_seqs: int = 64  # sequences running at once (a request with n completions counts n)
    max_num_batched_tokens: int = 512  # tokens per step; longer prompts are prefilled in chunks
    max_waiting: int = 256  # queued requests beyond which add_request raises EngineOverloadedError
    max_model_len: int | None = None  # None: the model's context length
    # Compute threads: the native backend's pool, or torch's with the torch backend.
    # None: the CPUs this process may use (its affinity mask).
    threads: int | None = None
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str | None = None  # torch backend only; None: float32 on CPU, bfloat16 on CUDA
    enable_prefix_caching: bool = True
    # "native": chatforge's kernels, each weight in its own format (a GGUF's Q4_1 / Q8_0 blocks,
    # float weights in float32), batch-invariant (models/native/model.h); "exact": transformers'
    # float32 arithmetic in torch (models/torch_backend.py). CUDA always takes torch.
    weights: str = "native"
    # Where the native kernels are compiled to and cached (None: ~/.cache/chatforge), and with what.
    kernel_cache_dir: str | None = None
    compiler: str = "cc"

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError("num_kv_blocks must be >= 1")
        if self.kv_cache_mb < 1:
            raise ValueError("kv_cache_mb must be >= 1")
        if self.max_num_seqs < 1 or self.max_waiting < 0:
            raise ValueError("max_num_seqs must be >= 1 and max_waiting >= 0")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # Every running sequence needs a token of budget per step, or the newest ones starve.
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.weights not in ("native", "exact"):
            raise ValueError("weights must be native or exact")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be float32, bfloat16 or float16")
