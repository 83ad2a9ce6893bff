"""Runs one scheduled batch through the model over the paged KV cache, then the sampler.

The runner owns the KV tensors (one [num_blocks * block_size, kv_heads, head_dim] pair per
layer). Each step it flattens the batch into one token row per new token, builds the
attention metadata once, runs one forward pass for every sequence together, and sends only the
rows that sample (each sequence's last new token) through the lm_head.

Batch invariance (measured on this project's CPU, fp32, 1 and 2 threads). Without help, a
sequence's logits move by ~2e-5 depending on its batch (greedy tokens of 16 prompts x 24 tokens
still agreed), for two reasons:
- MKL's sgemm gives each row the same bits for any M >= 4, but M = 1..3 take other kernels
  (1e-6 relative per layer): batch-1 decoding disagrees with every batched step;
- attention pads each sequence to the batch's longest context (and query length), and SDPA's
  reductions over the zero-weight padding keys change order with the padded length.
So each step appends one padding sequence of `_PAD_QUERY` tokens (every matmul then has >= 4
rows and every attention >= 4 queries) whose context is the batch's longest rounded up to a
multiple of `_KEY_MULTIPLE` (so the key length varies less); its block table points only at a
scratch block outside the pool, and its outputs are dropped. The lm_head gets >= 4 rows too.
Measured result: bit-identical logits alone, batched, chunk-prefilled and recomputed at the
tests' context lengths (up to ~100 tokens); from ~190 tokens on, some paddings still move the
low bits through SDPA's key blocking (a context of 193 padded to 256 alone, to 704 in a batch). Attention over fixed 256-key chunks with
an online softmax closed that gap in a prototype (contexts up to 1500, any padding); it belongs
in models/attention.py. The padding costs 4 tokens of compute per step (-40% tokens/s at batch
1, -18% at 8 and 32, benchmarks/offline_decode.py); `batch_invariant=False` turns it off.

Weights (`weights`, models/packed_linear.py): the runner fuses q/k/v and gate/up once (bit-identical
logits) and, with "int8" or "int4", multiplies steps of at most 8 or 16 rows by low-bit copies of the
weights with bfloat16 activations; with "q4", every step by chatforge's block-quantized kernels
(models/blockquant.py: Q4_1 layers, a Q8_0 lm_head, 8-bit activations per block of 32).
int8 and int4 are not batch-invariant whatever the padding (a step of few rows takes other
arithmetic than a larger one, and the padding itself pushes small steps over or under the
threshold). q4 computes a row's matmuls the same way at any row count, yet even with the padding
its greedy runs part from the same requests run alone (measured: 2 of 16 after 3 and 5 tokens);
where the rest of the difference comes from is not known. So the deterministic
configuration is fp32 + batch_invariant, the fast one q4 without it. Both stay the defaults'
choice to make in EngineConfig; README "Determinism vs speed" gives the trade-off,
benchmarks/RESULTS.md the figures.
"""

from __future__ import annotations

import torch
from torch import nn

from chatforge.engine import prompt_logprobs
from chatforge.engine.batch import ScheduledBatch
from chatforge.engine.sampler import Sampler, SamplerOutput
from chatforge.models.attention import AttentionMetadata

_PAD_QUERY = 4  # rows; see the module docstring
_KEY_MULTIPLE = 64  # key positions; see the module docstring
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str | None) -> torch.device:
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is not None:
        return _DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def kv_block_bytes(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers, K and V."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        num_blocks: int,
        block_size: int,
        sampler: Sampler,
        batch_invariant: bool = True,
        weights: str = "fp32",
    ):
        self.model = model
        self.block_size = block_size
        self.sampler = sampler
        self.batch_invariant = batch_invariant
        self.weights = weights
        self.device = next(model.parameters()).device
        self._prepare_weights()
        # Block ids 0..num_blocks-1 belong to the block manager; the one past them is scratch.
        self.scratch_block = num_blocks
        self.kv_caches = model.allocate_kv_caches(num_blocks + 1, block_size)

    def _prepare_weights(self) -> None:
        # Fused projections, int8 or not (models/packed_linear.py). Engines may share one model
        # (tests, benchmarks), so the mode is re-applied whenever another runner changed it.
        prepare = getattr(self.model, "prepare_for_inference", None)
        if prepare is not None and getattr(self.model, "weights_mode", None) != self.weights:
            prepare(self.weights)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> SamplerOutput:
        """One forward pass over the batch, then one token for each of batch.sample_seqs."""
        self._prepare_weights()
        input_ids, meta = self._prepare(batch)
        hidden = self.model(input_ids, meta.positions, meta, self.kv_caches)  # [T, D]
        scores = prompt_logprobs.score_prompts(self.model, hidden, batch) if prompt_logprobs.wanted(batch) else []
        if not batch.sample_indices:
            return SamplerOutput([], [], scores)
        last = meta.last_token_index  # [B (+1 padding)] flat row of each sequence's last new token
        if len(batch.sample_indices) != len(batch.seqs):
            last = last[torch.tensor(batch.sample_indices, device=self.device)]
        num_sampled = len(batch.sample_indices)
        if self.batch_invariant and num_sampled < _PAD_QUERY:
            last = torch.cat([last, meta.last_token_index[-1:].expand(_PAD_QUERY - num_sampled)])
        logits = self.model.compute_logits(hidden[last])[:num_sampled]  # float32 [S, V]
        if batch.has_forks:
            logits = logits[torch.tensor(batch.logits_rows, device=self.device)]
        sampled = self.sampler(logits, batch.sample_seqs)
        sampled.prompt_scores = scores
        return sampled

    def _prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, AttentionMetadata]:
        seqs, query_lens = batch.seqs, list(batch.num_new_tokens)
        context_lens = [s.num_computed_tokens + n for s, n in zip(seqs, query_lens)]
        if len(query_lens) == batch.num_batched_tokens:  # one new token each (decoding)
            ids = [s.token_ids[s.num_computed_tokens] for s in seqs]
        else:
            ids = [t for s, n, c in zip(seqs, query_lens, context_lens) for t in s.token_ids[c - n : c]]
        block_tables = [s.block_table for s in seqs]
        if self.batch_invariant:
            padded_context = -(-max(context_lens) // _KEY_MULTIPLE) * _KEY_MULTIPLE
            query_lens.append(_PAD_QUERY)
            context_lens.append(padded_context)
            block_tables.append([self.scratch_block] * -(-padded_context // self.block_size))
            ids.extend([0] * _PAD_QUERY)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        # Without batch invariance, decode steps may read the KV cache in place (models/attention.py).
        meta = AttentionMetadata.build(
            query_lens, context_lens, block_tables, self.block_size, self.device, native_kernels=not self.batch_invariant
        )
        return input_ids, meta
