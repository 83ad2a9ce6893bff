"""Paged attention for the torch backend (models/torch_backend.py; the native backend has its own,
native/attention.c).

A forward pass takes a flat batch of T new tokens from B sequences, in order. Sequence i
contributes `query_lens[i]` tokens, which are the LAST `query_lens[i]` of its `context_lens[i]`
positions (context = tokens already in the KV cache + these new ones). Prefill, a later chunk of
a long prompt and a decode step (query_len 1) are the same thing in this form, and mix freely in
one batch: there are no phases.

KV cache, per layer: `k_cache`, `v_cache` of shape [num_blocks * block_size, num_kv_heads, head_dim].
Position p of sequence i lives in slot `block_tables[i][p // block_size] * block_size + p % block_size`.

`AttentionMetadata.build` turns the lists into index tensors once per forward pass; every layer
then does: write the new K/V at `slot_mapping` -> gather each sequence's whole context with one
index op into a padded [B, Lk] batch -> one `scaled_dot_product_attention` -> unpad.

Padding, and why it never changes a real row:
- key positions k >= context_len[i] point at a real slot of the same sequence (clamped), but the
  mask forbids them (causality already does: every real query position is < context_len[i]),
  so they get weight exactly 0 after the softmax;
- query rows j >= query_len[i] repeat the sequence's last real query (same position, same mask
  row), so no row is ever fully masked (no NaN) and their outputs are simply dropped by `unpad`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chatforge.models.errors import AttentionMetadataError


@dataclass
class AttentionMetadata:
    query_lens: list[int]  # new tokens per sequence, each >= 1
    context_lens: list[int]  # cached + new tokens per sequence
    block_size: int | None  # None when there is no cache
    positions: torch.Tensor  # [T] absolute position of each new token
    slot_mapping: torch.Tensor | None  # [T] cache slot each new token's K/V is written to; None without cache
    key_index: torch.Tensor  # [B, Lk] row of the key source (cache slots, or new-token rows) per key position
    query_index: torch.Tensor  # [B, Lq] flat token row of each padded query (pads repeat the last real one)
    output_index: torch.Tensor  # [T] row of each flat token in the padded output viewed as [B * Lq]
    last_token_index: torch.Tensor  # [B] flat row of each sequence's last new token (where it samples)
    query_positions: torch.Tensor  # [B, Lq] absolute position of each padded query
    context_len_tensor: torch.Tensor  # [B] context_lens as a tensor
    _masks: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)  # (window, dtype) -> mask

    @property
    def decode_only(self) -> bool:
        """One new token per sequence."""
        return self.query_index.shape[1] == 1

    @property
    def uses_cache(self) -> bool:
        return self.slot_mapping is not None

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[0]

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]] | None,
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        _validate(query_lens, context_lens, block_tables, block_size)
        B = len(query_lens)
        q_lens = torch.tensor(query_lens, dtype=torch.long, device=device)
        ctx_lens = torch.tensor(context_lens, dtype=torch.long, device=device)
        starts = torch.cumsum(q_lens, 0) - q_lens  # [B] first flat row of each sequence
        first_pos = ctx_lens - q_lens  # [B] position of each sequence's first new token
        T = int(sum(query_lens))
        seq_of_token = torch.repeat_interleave(torch.arange(B, device=device), q_lens)  # [T]
        offset = torch.arange(T, device=device) - starts[seq_of_token]  # [T] index within its sequence
        positions = first_pos[seq_of_token] + offset

        Lq, Lk = max(query_lens), max(context_lens)
        j = torch.arange(Lq, device=device)[None, :]  # [1, Lq]
        q_offset = torch.minimum(j, q_lens[:, None] - 1)  # [B, Lq], pads clamp to the last real query
        query_index = starts[:, None] + q_offset
        query_positions = first_pos[:, None] + q_offset
        output_index = seq_of_token * Lq + offset
        # Key positions past a sequence's context clamp to its last position: a real row, masked anyway.
        key_pos = torch.minimum(torch.arange(Lk, device=device)[None, :], ctx_lens[:, None] - 1)  # [B, Lk]

        if block_tables is None:
            slot_mapping = None
            key_index = starts[:, None] + key_pos  # keys are the new tokens themselves
        else:
            width = max(len(t) for t in block_tables)
            padded = [list(t) + [0] * (width - len(t)) for t in block_tables]
            tables = torch.tensor(padded, dtype=torch.long, device=device)  # [B, max_blocks]
            key_index = _slots(tables, key_pos, block_size)
            slot_mapping = _slots(tables[seq_of_token], positions[:, None], block_size)[:, 0]
        return cls(
            query_lens=list(query_lens),
            context_lens=list(context_lens),
            block_size=None if block_tables is None else block_size,
            positions=positions,
            slot_mapping=slot_mapping,
            key_index=key_index,
            query_index=query_index,
            output_index=output_index,
            last_token_index=starts + q_lens - 1,
            query_positions=query_positions,
            context_len_tensor=ctx_lens,
        )

    def mask(self, sliding_window: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[B, 1, Lq, Lk]: bool (True where a query may attend a key), or with a `dtype` the additive
        form (0 / -inf) that SDPA would otherwise rebuild from the bool mask in every layer. Built once
        per (window, dtype) and reused by every layer. Causal: k_pos <= q_pos (which also excludes key
        padding, as q_pos < context_len). Sliding window: also q_pos - k_pos < sliding_window
        (transformers' convention)."""
        key = (sliding_window, dtype)
        if key not in self._masks:
            if dtype is not None:
                allowed = self.mask(sliding_window)
                additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
                self._masks[key] = additive.masked_fill_(~allowed, float("-inf"))
            else:
                Lk = self.key_index.shape[1]
                k_pos = torch.arange(Lk, device=self.key_index.device)[None, None, :]  # [1, 1, Lk]
                q_pos = self.query_positions[:, :, None]  # [B, Lq, 1]
                allowed = k_pos <= q_pos
                if sliding_window is not None:
                    allowed &= q_pos - k_pos < sliding_window
                self._masks[key] = allowed[:, None, :, :]
        return self._masks[key]


def _slots(tables: torch.Tensor, pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """tables: [N, max_blocks]; pos: [N, L] -> cache slot of each position, [N, L]."""
    blocks = torch.gather(tables, 1, pos // block_size)
    return blocks * block_size + pos % block_size


def _validate(query_lens, context_lens, block_tables, block_size) -> None:
    if not query_lens or len(query_lens) != len(context_lens):
        raise AttentionMetadataError(
            f"need one query_len and one context_len per sequence, got {len(query_lens)} and {len(context_lens)}"
        )
    for i, (q, c) in enumerate(zip(query_lens, context_lens)):
        if q < 1 or c < q:
            raise AttentionMetadataError(f"sequence {i}: need 1 <= query_len <= context_len, got {q} and {c}")
    if block_tables is None:
        if list(query_lens) != list(context_lens):
            raise AttentionMetadataError("without a KV cache (block_tables=None) context_lens must equal query_lens")
        return
    if block_size < 1:
        raise AttentionMetadataError(f"block_size must be positive, got {block_size}")
    if len(block_tables) != len(query_lens):
        raise AttentionMetadataError(f"{len(block_tables)} block tables for {len(query_lens)} sequences")
    for i, (table, c) in enumerate(zip(block_tables, context_lens)):
        if len(table) * block_size < c:
            raise AttentionMetadataError(
                f"sequence {i}: {len(table)} blocks of {block_size} cannot hold {c} positions"
            )


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: AttentionMetadata,
    kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, Hkv, D] (RoPE applied) -> [T, H, D].

    With a cache, the new K/V are written into it first and every key, old or new, is read back
    from it; without one (block_tables=None) the keys are the new tokens themselves."""
    if kv_cache is not None:
        if not meta.uses_cache:
            raise AttentionMetadataError("a KV cache was passed but the metadata was built without block tables")
        k_cache, v_cache = kv_cache
        k_cache.index_copy_(0, meta.slot_mapping, k)
        v_cache.index_copy_(0, meta.slot_mapping, v)
        k, v = k_cache, v_cache
    elif meta.uses_cache:
        raise AttentionMetadataError("the metadata has block tables but no KV cache was passed")
    B, Lq = meta.query_index.shape
    if Lq == 1:  # one new token per sequence (decoding): rows are already in batch order
        queries = q[:, :, None, :]  # [B, H, 1, D], a view
    else:
        queries = q[meta.query_index].transpose(1, 2)  # [B, H, Lq, D]
    keys = k[meta.key_index].transpose(1, 2)  # [B, Hkv, Lk, D]
    values = v[meta.key_index].transpose(1, 2)  # [B, Hkv, Lk, D]
    out = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=meta.mask(sliding_window, queries.dtype), scale=scale,
        enable_gqa=keys.shape[1] != queries.shape[1],
    )  # [B, H, Lq, D]
    if Lq == 1:
        return out[:, :, 0, :]  # [T, H, D]
    out = out.transpose(1, 2).reshape(B * Lq, q.shape[1], q.shape[2])
    return out[meta.output_index]  # [T, H, D]


def allocate_kv_caches(
    num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device | str = "cpu",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed (k_cache, v_cache) per layer, each [num_blocks * block_size, num_kv_heads, head_dim]."""
    shape = (num_blocks * block_size, num_kv_heads, head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]
