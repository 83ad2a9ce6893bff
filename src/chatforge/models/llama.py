"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3, Mixtral): pre-norm transformer
blocks of RMSNorm -> grouped-query attention with RoPE -> residual, RMSNorm -> SwiGLU MLP (or
Mixtral's mixture of SwiGLU experts, models/mixtral.py) -> residual.

The families differ only in configuration (qkv bias for Qwen2, QK-norm for Qwen3, a sliding
window for Mistral, RoPE scaling for Llama 3.1, experts for Mixtral), so one class serves all.
Parameter names equal Hugging Face's state-dict names (`model.layers.N.self_attn.q_proj.weight`,
...), so safetensors files load without renaming (Mixtral's experts are stacked, mixtral.py). Activations are a flat batch of T tokens; attention runs over the
paged KV cache described by `AttentionMetadata`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chatforge.models import fused_ops
from chatforge.models.attention import (
    AttentionMetadata,
    allocate_kv_caches,
    decode_attention_in_place,
    paged_attention,
    uses_native_decode,
)
from chatforge.models.config import ModelConfig
from chatforge.models.mixtral import SparseMoeBlock
from chatforge.models.packed_linear import DEFAULT_MAX_ROWS, WEIGHT_MODES, PackedLinear
from chatforge.models.rotary import RotaryEmbedding, apply_rotary

KVCache = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 whatever the activation dtype, then scaled: x / rms(x) * weight.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale
        self.sliding_window = config.layer_sliding_window(layer)
        # Qwen3: each head's query and key RMS-normalised (over head_dim) before RoPE.
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        d, qkv_bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=config.o_proj_bias)

        self.qkv_proj: PackedLinear | None = None  # set by `fuse`

    def fuse(self) -> None:
        """Replace q/k/v with one [(H + 2 Hkv) * D, d] matmul and o with a PackedLinear (inference
        only; the HF parameter names are gone afterwards)."""
        if self.qkv_proj is None:
            self.qkv_proj = PackedLinear.fuse([self.q_proj, self.k_proj, self.v_proj])
            o_proj = PackedLinear.fuse([self.o_proj])
            del self.q_proj, self.k_proj, self.v_proj, self.o_proj
            self.o_proj = o_proj

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        T, H, Hkv, D = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv_proj is not None and self.q_norm is None:
            qkv = self.qkv_proj(x).view(T, H + 2 * Hkv, D)
            qk = apply_rotary(qkv[:, : H + Hkv], cos, sin)  # q and k rotated in one pass
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hkv :]  # [T, H, D], [T, Hkv, D], [T, Hkv, D]
        else:
            if self.qkv_proj is not None:
                qkv = self.qkv_proj(x).view(T, H + 2 * Hkv, D)
                q, k, v = qkv[:, :H], qkv[:, H : H + Hkv], qkv[:, H + Hkv :]
            else:
                q, k, v = self.q_proj(x).view(T, H, D), self.k_proj(x).view(T, Hkv, D), self.v_proj(x).view(T, Hkv, D)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = paged_attention(q, k, v, meta, kv_cache, self.scale, self.sliding_window)  # [T, H, D]
        return self.o_proj(out.reshape(T, self.num_heads * self.head_dim))

    def forward_fused(self, x, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        """`forward` on the fused kernels (fused_ops.py): a decode step rotates q and k and writes
        the cache in one call, then reads the cache in place; other steps take `forward`."""
        if self.qkv_proj is None or self.q_norm is not None or not uses_native_decode(meta, x, kv_cache):
            return self.forward(x, cos, sin, meta, kv_cache)
        k_cache, v_cache = kv_cache
        q = fused_ops.rotary_cache_write(self.qkv_proj(x), cos, sin, meta.slot_mapping, k_cache, v_cache, self.num_heads)
        out = decode_attention_in_place(q, k_cache, v_cache, meta, self.scale, self.sliding_window)  # [T, H, D]
        return self.o_proj(out.view(x.shape[0], self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, ff, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, ff, bias=bias)
        self.up_proj = nn.Linear(d, ff, bias=bias)
        self.down_proj = nn.Linear(ff, d, bias=bias)
        self.gate_up_proj: PackedLinear | None = None  # set by `fuse`

    def fuse(self) -> None:
        """Replace gate/up with one [2 ff, d] matmul and down with a PackedLinear (inference only)."""
        if self.gate_up_proj is None:
            self.gate_up_proj = PackedLinear.fuse([self.gate_proj, self.up_proj])
            down = PackedLinear.fuse([self.down_proj])
            del self.gate_proj, self.up_proj, self.down_proj
            self.down_proj = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj.split(self.gate_up_proj(x))
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            return self.forward(x)
        return self.down_proj(fused_ops.swiglu(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SparseMoeBlock(config) if config.num_experts else MLP(config)

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_fused(self, x, pending, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        """The same layer on the fused kernels. x, the residual stream, is updated in place: first
        by `pending` (the previous layer's output, None before the first layer), then by the
        attention's; returns the MLP's output, for the next layer (or the final norm) to add."""
        attn_norm, mlp_norm = self.input_layernorm, self.post_attention_layernorm
        h = self.self_attn.forward_fused(fused_ops.add_rms_norm(x, pending, attn_norm.weight, attn_norm.eps), cos, sin, meta, kv_cache)
        return self.mlp.forward_fused(fused_ops.add_rms_norm(x, h, mlp_norm.weight, mlp_norm.eps))


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        weight = torch.empty(config.vocab_size, config.hidden_size)
        if not weight.is_meta:
            # NOTE: skipped on the meta device (the loader's), where normal_ alone imports
            # torch._dynamo: ~2 s of load time for values the checkpoint overwrites anyway.
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None):
        x = self.embed_tokens(input_ids)  # [T, d]
        cos, sin = self.rotary_emb(positions, x.dtype)  # [T, head_dim] each, shared by all layers
        if meta.native_kernels and fused_ops.applies(x):
            pending = None
            for i, layer in enumerate(self.layers):
                pending = layer.forward_fused(x, pending, cos, sin, meta, None if kv_caches is None else kv_caches[i])
            return fused_ops.add_rms_norm(x, pending, self.norm.weight, self.norm.eps)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, meta, None if kv_caches is None else kv_caches[i])
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """Serves LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and
    MixtralForCausalLM checkpoints."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        # Tied models have no lm_head parameter (HF files omit it too); logits reuse the embedding.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logits_proj: PackedLinear | None = None  # set by `prepare_for_inference`
        self.weights_mode: str | None = None  # None: unfused HF layout

    def prepare_for_inference(self, weights: str = "fp32", max_rows: int | None = None) -> None:
        """Fuse q/k/v and gate/up (once; the HF parameter names are gone afterwards) and choose the
        weights of the matmuls: "fp32" only, or "int8" / "int4" / "q4" for inputs of at most
        `max_rows` rows (default: the mode's DEFAULT_MAX_ROWS, models/packed_linear.py). May be
        called again to switch modes."""
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
        if self.logits_proj is None:
            for layer in self.model.layers:
                layer.self_attn.fuse()
                layer.mlp.fuse()
            # Shares the (tied) embedding's storage: no copy of the float32 weight.
            head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            self.logits_proj = PackedLinear(head.detach())
        # "int4": the layers' matmuls in int4 (a Q4_1 checkpoint's own grid), the lm_head in int8:
        # GGUF files keep the embedding at 8 bits or more, and int4 there would add error.
        max_rows = 0 if weights == "fp32" else DEFAULT_MAX_ROWS[weights] if max_rows is None else max_rows
        # "q4": llama.cpp's arithmetic, chatforge's kernels (blockquant.py): the layers in Q4_1, the
        # lm_head in Q8_0, activations in 8 bits per block of 32.
        for module in self.modules():
            if isinstance(module, PackedLinear):
                head = module is self.logits_proj
                int4 = weights == "int4" and not head
                int8 = weights == "int8" or (weights == "int4" and head)
                block = ("q8_0" if head else "q4_1") if weights == "q4" else None
                module.set_int4(max_rows if int4 else 0)
                module.set_int8(max_rows if int8 else 0)
                module.set_block_quant(block, max_rows)
        self.weights_mode = weights

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """input_ids, positions: LongTensor [T] -> final hidden states [T, hidden_size]."""
        if kv_caches is not None and len(kv_caches) != self.config.num_hidden_layers:
            raise ValueError(f"{len(kv_caches)} KV caches for {self.config.num_hidden_layers} layers")
        return self.model(input_ids, positions, meta, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> float32 logits [N, vocab]. Called on the sampled rows only."""
        if self.logits_proj is not None:
            return self.logits_proj(hidden).float()
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def kv_cache_shape(self, num_blocks: int, block_size: int) -> tuple[int, int, int]:
        """Shape of one layer's k_cache (and v_cache)."""
        return (num_blocks * block_size, self.config.num_key_value_heads, self.config.head_dim)

    def allocate_kv_caches(self, num_blocks: int, block_size: int) -> list[KVCache]:
        """One zeroed (k_cache, v_cache) pair per layer, in the model's dtype and on its device."""
        weight = self.model.embed_tokens.weight
        c = self.config
        return allocate_kv_caches(
            c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim, weight.dtype, weight.device
        )
