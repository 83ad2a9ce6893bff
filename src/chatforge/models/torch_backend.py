"""The torch backend: the model as plain torch modules (models/llama.py), one forward each.

transformers' arithmetic in float32 (the exact mode, which the parity tests use) or bfloat16 on
CUDA. Not batch-invariant: a sequence's logits move in the last bits with the batch (other
matmul kernels for other row counts, SDPA's reductions over padded keys), which can flip a
near-tie greedy choice. The KV cache is one (k, v) pair per layer in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chatforge.models.attention import AttentionMetadata, allocate_kv_caches
from chatforge.models.step import StepInputs


@dataclass
class TorchKVCache:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), [num_blocks * block_size, kv_heads, head_dim]
    block_size: int


class TorchBackend:
    """A ModelBackend (models/step.py) over a loaded torch model."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.computes_in_torch = True

    def kv_block_bytes(self, block_size: int) -> int:
        c = self.config
        return 2 * c.num_hidden_layers * block_size * c.num_key_value_heads * c.head_dim * self.dtype.itemsize

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> TorchKVCache:
        c = self.config
        layers = allocate_kv_caches(
            c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim, self.dtype, self.device
        )
        return TorchKVCache(layers, block_size)

    @torch.inference_mode()
    def execute(self, step: StepInputs, kv_cache: TorchKVCache) -> torch.Tensor:
        meta = AttentionMetadata.build(step.query_lens, step.context_lens, step.block_tables, kv_cache.block_size, self.device)
        input_ids = torch.tensor(step.token_ids, dtype=torch.long, device=self.device)
        self._hidden = hidden = self.model(input_ids, meta.positions, meta, kv_cache.layers)  # [T, D]
        rows = torch.tensor(step.sample_rows, dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden[rows])

    @torch.inference_mode()
    def step_logits(self, rows: list[int]) -> torch.Tensor:
        """float32 logits of other rows of the step just run (models/step.py)."""
        return self.model.compute_logits(self._hidden[torch.tensor(rows, dtype=torch.long, device=self.device)])
