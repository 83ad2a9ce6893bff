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
    torch_threads: int | None = None  # None: leave torch's setting alone
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    enable_prefix_caching: bool = True
    # Pad each step so that a sequence's logits do not depend on its batch (model_runner.py).
    batch_invariant: bool = True
    # Matmul weights: "fp32", "int8" / "int4" weight-only, or "q4" (weights and activations
    # block-quantized, models/blockquant.py) for steps of few rows
    # (models/packed_linear.py); faster at small batches, but results depend on the batch (model_runner.py).
    weights: str = "fp32"

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
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError("torch_threads must be >= 1")
        if self.weights not in ("fp32", "int8", "int4", "q4"):
            raise ValueError("weights must be fp32, int8, int4 or q4")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be float32, bfloat16 or float16")
