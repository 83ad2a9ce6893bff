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

from chatforge.models.attention import AttentionMetadata, allocate_kv_caches, paged_attention
from chatforge.models.config import ModelConfig
from chatforge.models.mixtral import SparseMoeBlock
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

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        T, H, Hkv, D = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.q_proj(x).view(T, H, D), self.k_proj(x).view(T, Hkv, D), self.v_proj(x).view(T, Hkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = paged_attention(q, k, v, meta, kv_cache, self.scale, self.sliding_window)  # [T, H, D]
        return self.o_proj(out.reshape(T, H * D))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, ff, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, ff, bias=bias)
        self.up_proj = nn.Linear(d, ff, bias=bias)
        self.down_proj = nn.Linear(ff, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def allocate_kv_caches(self, num_blocks: int, block_size: int) -> list[KVCache]:
        """One zeroed (k_cache, v_cache) pair per layer, in the model's dtype and on its device."""
        weight = self.model.embed_tokens.weight
        c = self.config
        return allocate_kv_caches(
            c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim, weight.dtype, weight.device
        )
