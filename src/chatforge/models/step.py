"""What the engine hands a model backend each step, and what every backend provides.

A step is a flat batch of new tokens from several sequences, in order: sequence i contributes
`query_lens[i]` tokens, the LAST `query_lens[i]` of its `context_lens[i]` positions (context =
tokens already in the KV cache + these new ones). Prefill, a later chunk of a long prompt and a
decode step (query_len 1) are the same thing in this form, and mix freely in one batch.

Two backends implement `ModelBackend`, chosen once when the model is loaded (models/backend.py):
- native (models/native_model.py): the whole forward pass as one C call per step, weights in
  their quantized GGUF form, batch-invariant by construction; the default on CPUs;
- torch (models/torch_backend.py): plain torch modules, float32 (bfloat16 on CUDA), transformers'
  arithmetic; the exact mode and the CUDA path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from chatforge.models.config import ModelConfig


@dataclass
class StepInputs:
    token_ids: list[int]  # [T] the new tokens, sequence after sequence
    query_lens: list[int]  # [B] new tokens per sequence, each >= 1
    context_lens: list[int]  # [B] cached + new tokens per sequence
    block_tables: list[list[int]]  # [B] each sequence's KV blocks, in order
    sample_rows: list[int]  # flat rows (into token_ids) whose logits are wanted, in order

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class ModelBackend(Protocol):
    config: ModelConfig
    device: torch.device  # where the logits come out
    computes_in_torch: bool  # whether torch's threads do the model's work (else only sampling's)

    def kv_block_bytes(self, block_size: int) -> int:
        """Bytes of one KV block over all layers, K and V."""

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> Any:
        """A KV cache of `num_blocks` blocks for `execute` (the engine's runner holds it)."""

    def execute(self, step: StepInputs, kv_cache: Any) -> torch.Tensor:
        """Run the step (its new K/V written into the cache) -> float32 logits [len(sample_rows), vocab]."""

    def step_logits(self, rows: list[int]) -> torch.Tensor:
        """float32 logits [len(rows), vocab] of other rows (flat, of its StepInputs, at most as
        many as it had tokens) of the step just run: prompt logprobs score every prompt row. Called
        right after `execute`, before the next step."""
