"""The Gemma 3 text decoder (Gemma3ForCausalLM), in the exact float32 path.

What sets it apart from the Llama family (llama.py), each as transformers computes it:
- the embeddings are multiplied by sqrt(hidden_size), rounded to the activation dtype first;
- RMSNorm scales by (1 + weight) and multiplies before casting back (`GemmaRMSNorm`);
- "sandwich" norms: each sub-block's output is normalised again before the residual add, and
  the MLP has its own pre-norm (`pre_feedforward_layernorm`);
- QK-norm: each head's query and key are RMS-normalised before RoPE;
- attention scale query_pre_attn_scalar ** -0.5 instead of head_dim ** -0.5;
- layers alternate: five sliding-window ("local") layers with RoPE base 10,000, then one global
  layer with its own base (1,000,000) and RoPE scaling, per `config.layer_types`;
- GeGLU: gelu (tanh approximation) on the gate instead of silu;
- optional final logit soft-capping, cap * tanh(logits / cap).
Parameter names are transformers' (`model.layers.N.pre_feedforward_layernorm.weight`, ...).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from chatforge.models.attention import AttentionMetadata, allocate_kv_caches, paged_attention
from chatforge.models.config import ModelConfig
from chatforge.models.errors import ModelError
from chatforge.models.rotary import RotaryEmbedding, apply_rotary

KVCache = tuple[torch.Tensor, torch.Tensor]


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32: x / rms(x) * (1 + weight), then back to the activation dtype.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.scale = config.attention_scale
        self.sliding_window = config.layer_sliding_window(layer)
        d, D, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * D, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * D, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * D, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * D, d, bias=bias)
        self.q_norm = GemmaRMSNorm(D, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(D, config.rms_norm_eps)

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        T, D = x.shape[0], self.head_dim
        q = apply_rotary(self.q_norm(self.q_proj(x).view(T, self.num_heads, D)), cos, sin)  # [T, H, D]
        k = apply_rotary(self.k_norm(self.k_proj(x).view(T, self.num_kv_heads, D)), cos, sin)  # [T, Hkv, D]
        v = self.v_proj(x).view(T, self.num_kv_heads, D)
        out = paged_attention(q, k, v, meta, kv_cache, self.scale, self.sliding_window)  # [T, H, D]
        return self.o_proj(out.reshape(T, self.num_heads * D))


class Gemma3MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, ff = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.is_local = config.layer_sliding_window(layer) is not None
        self.input_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = Gemma3Attention(config, layer)
        self.post_attention_layernorm = GemmaRMSNorm(d, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.mlp = Gemma3MLP(config)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache: KVCache | None) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, meta, kv_cache))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        # NOTE: given an empty weight, not initialised: on the loader's meta device, normal_ would
        # import torch._dynamo (seconds) for values the checkpoint overwrites anyway.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.embed_scale = config.hidden_size**0.5
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)  # the global layers'
        local = config.rope_local_theta
        self.rotary_emb_local = RotaryEmbedding(replace(config, rope_theta=local, rope_scaling=None)) if local else None

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None):
        x = self.embed_tokens(input_ids)  # [T, d]
        # NOTE: the scale is rounded to the activation dtype before multiplying, as transformers does
        # (in bfloat16, sqrt(640) = 25.298 becomes 25.25).
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype, device=x.device)
        rope_global = self.rotary_emb(positions, x.dtype)  # cos, sin: [T, head_dim] each
        rope_local = self.rotary_emb_local(positions, x.dtype) if self.rotary_emb_local is not None else rope_global
        for i, layer in enumerate(self.layers):
            cos, sin = rope_local if layer.is_local else rope_global
            x = layer(x, cos, sin, meta, None if kv_caches is None else kv_caches[i])
        return self.norm(x)


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Gemma3Model(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)


    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None = None):
        """input_ids, positions: LongTensor [T] -> final hidden states [T, hidden_size]."""
        if kv_caches is not None and len(kv_caches) != self.config.num_hidden_layers:
            raise ValueError(f"{len(kv_caches)} KV caches for {self.config.num_hidden_layers} layers")
        return self.model(input_ids, positions, meta, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> float32 logits [N, vocab]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

    def allocate_kv_caches(self, num_blocks: int, block_size: int) -> list[KVCache]:
        """One zeroed (k_cache, v_cache) pair per layer, in the model's dtype and on its device."""
        weight = self.model.embed_tokens.weight
        c = self.config
        return allocate_kv_caches(
            c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim, weight.dtype, weight.device
        )
