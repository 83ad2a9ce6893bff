"""Rotary position embedding (RoPE, Su et al. 2021) and its context-extension variants.

Each pair of channels (i, i + head_dim/2) of a query or key is rotated by the angle
`position * inv_freq[i]` ("rotate half" layout, as in Hugging Face checkpoints; GGUF's
interleaved layout is converted to it by the loader). The variants only change `inv_freq`:

- linear (position interpolation): every frequency divided by `factor`;
- llama3: long wavelengths divided by `factor`, short ones kept, a smooth blend between;
- freq_factors: GGUF's llama3 form, per-frequency divisors stored in the file.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from chatforge.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """float32 [head_dim / 2]: the rotation speed of each channel pair."""
    dim = config.head_dim
    # NOTE: int64 arange then float, as transformers does, so the frequencies match bit for bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "freq_factors":
        factors = torch.tensor(scaling["factors"], dtype=torch.float32, device="cpu")
        if factors.shape != inv_freq.shape:
            raise ValueError(f"rope freq_factors has {factors.numel()} entries, expected {inv_freq.numel()}")
        return inv_freq / factors
    return _llama3(inv_freq, scaling)


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Wavelengths longer than the pre-training context / low: slowed by `factor`;
    # shorter than context / high: unchanged; in between: interpolated.
    slowed = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * slowed / factor + smooth * slowed
    medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return torch.where(medium, blended, slowed)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the positions of one forward pass, computed once and shared by all layers."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        # Not persistent: derived from the config, never part of a checkpoint. Created on the CPU
        # explicitly so a model built on the meta device still gets real values.
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] -> cos, sin: [T, head_dim], computed in float32 then cast like the activations.
        freqs = positions[:, None].float() * self.inv_freq.float()[None, :]  # [T, head_dim/2]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos, sin: [T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
