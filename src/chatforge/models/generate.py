"""Offline greedy decoding of one sequence: proves a model end to end, outside the engine.

It uses the same paged-attention path as the engine with the simplest possible cache: one
block big enough for the whole sequence, so the block table is `[0]`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from chatforge.models.attention import AttentionMetadata


@torch.inference_mode()
def greedy_generate(
    model, prompt_ids: list[int], max_new_tokens: int, eos_token_ids: Iterable[int] = ()
) -> list[int]:
    """The new token ids, argmax at each step; stops after the first EOS id (which is included)
    or after `max_new_tokens`."""
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    eos = set(eos_token_ids)
    device = model.model.embed_tokens.weight.device
    capacity = len(prompt_ids) + max_new_tokens
    kv_caches = model.allocate_kv_caches(num_blocks=1, block_size=capacity)
    generated: list[int] = []
    new_ids = list(prompt_ids)
    while len(generated) < max_new_tokens:
        context = len(prompt_ids) + len(generated)
        meta = AttentionMetadata.build([len(new_ids)], [context], [[0]], capacity, device)
        input_ids = torch.tensor(new_ids, dtype=torch.long, device=device)
        hidden = model(input_ids, meta.positions, meta, kv_caches)  # [len(new_ids), d]
        logits = model.compute_logits(hidden[meta.last_token_index])  # [1, vocab]
        token = int(logits[0].argmax())
        generated.append(token)
        if token in eos:
            break
        new_ids = [token]
    return generated
