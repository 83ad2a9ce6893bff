"""GGUF tensors -> Hugging Face state-dict tensors (Llama family, Qwen3, Mixtral, Gemma 3).

llama.cpp names tensors its own way (`blk.3.attn_q.weight`) and changes some on conversion;
each change is undone here, so that the weights equal what transformers loads from the file:
- for the "llama" architecture its converter permutes the rows of q/k projections so that RoPE
  can rotate adjacent channel pairs (interleaved layout); our model rotates halves (HF layout),
  so those rows are permuted back;
- for Gemma 3 it stores RMSNorm weights as the factor itself, 1 + w (Gemma's norms multiply by
  1 + w); 1 is taken off again;
- Gemma's `ffn_norm` is the MLP's pre-norm, and it has post-norms of its own (`_GEMMA3_NAMES`);
- Mixtral's experts come as one [E, out, in] tensor per projection (`ffn_gate_exps`, ...), the
  layout the model keeps; old files with one tensor per expert (`ffn_gate.3.weight`) are mapped
  to Hugging Face's per-expert names, which the loader stacks (models/mixtral.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from chatforge.models.config import ModelConfig
from chatforge.models.errors import WeightsMismatchError
from chatforge.models.gguf_file import GGUFFile

# ggml types that hold float values as they are (everything else is block-quantized)
FLOAT_TYPES = {0: "F32", 1: "F16", 30: "BF16"}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate_inp": "mlp.gate",
}
_GEMMA3_NAMES = {
    **_BLOCK_NAMES,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Stacked experts are parameters of their own, without a ".weight" suffix.
_EXPERT_NAMES = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
_OLD_EXPERT_NAMES = {"ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_OLD_EXPERT_RE = re.compile(r"blk\.(\d+)\.(ffn_gate|ffn_up|ffn_down)\.(\d+)\.weight")
# Per-frequency RoPE divisors (llama3-style scaling, GGUF's form). Not a model parameter.
ROPE_FREQS = "rope_freqs.weight"


def hf_name(gguf_name: str, arch: str = "llama") -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (`arch`: the file's
    `general.architecture`)."""
    names = _GEMMA3_NAMES if arch == "gemma3" else _BLOCK_NAMES
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
    if m and m.group(2) in _EXPERT_NAMES and m.group(3) == "weight":
        return f"model.layers.{m.group(1)}.mlp.experts.{_EXPERT_NAMES[m.group(2)]}"
    if m := _OLD_EXPERT_RE.fullmatch(gguf_name):
        return f"model.layers.{m.group(1)}.block_sparse_moe.experts.{m.group(3)}.{_OLD_EXPERT_NAMES[m.group(2)]}.weight"
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES and suffix in ("weight", "bias"):
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    raise WeightsMismatchError(f"unexpected GGUF tensor {gguf_name!r}: chatforge has no place for it")


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. w: [d_out, d_in] (or a [d_out] bias).

    Within each head, llama.cpp reorders the rows (0, h, 1, h+1, ...) -> interleaved pairs;
    viewing the head's rows as [2, h] vs [h, 2] and swapping the two axes restores HF's order."""
    d_out = w.shape[0]
    rest = w.shape[1:]
    return np.ascontiguousarray(
        w.reshape(n_head, d_out // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(d_out, *rest)
    )


@dataclass
class QuantizedTensor:
    """A GGUF matrix kept in its file's block-quantized form: `blocks` [N, bytes per row], rows
    in the Hugging Face order (q/k rows already un-permuted), for a kernel that reads the format.
    Mixtral's stacked experts are one of shape [E, N, K], their rows expert after expert."""

    ggml_type: int
    shape: tuple[int, ...]  # [N, K], or [E, N, K]
    blocks: np.ndarray  # uint8 [rows, bytes per row]

    def experts(self) -> list[QuantizedTensor]:
        """A stacked [E, N, K] tensor's matrices, one per expert (views of its blocks)."""
        E, N, K = self.shape
        return [QuantizedTensor(self.ggml_type, (N, K), self.blocks[e * N : (e + 1) * N]) for e in range(E)]

    def dequantize(self) -> np.ndarray:
        """float32 [N, K], the values transformers would load."""
        import gguf.quants
        from gguf import GGMLQuantizationType

        kernel = getattr(gguf.quants, GGMLQuantizationType(self.ggml_type).name, None)
        if kernel is not None and hasattr(kernel, "dequantize_rows"):
            kernel.init_grid()
            out = kernel.dequantize_rows(self.blocks)
        else:
            out = gguf.quants.dequantize(self.blocks, GGMLQuantizationType(self.ggml_type))
        return np.asarray(out, dtype=np.float32).reshape(self.shape)


def read_gguf(path: str | Path, keep_quantized: bool = False) -> tuple[ModelConfig, dict[str, torch.Tensor | QuantizedTensor]]:
    """(config, state dict with HF names) from a GGUF file: float32 tensors, or with
    `keep_quantized` the block-quantized matrices (stacked experts too) as QuantizedTensor (no
    float copy made)."""
    gguf = GGUFFile(path)
    try:
        config = ModelConfig.from_gguf_metadata(gguf.metadata, gguf.tensors.keys())
        arch = gguf.metadata.get("general.architecture")
        permuted = arch == "llama"
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
        state: dict[str, torch.Tensor] = {}
        for name in gguf.tensors:
            if name == ROPE_FREQS:
                factors = gguf.dequantize(name).reshape(-1).tolist()
                config = replace(config, rope_scaling={"rope_type": "freq_factors", "factors": tuple(factors)})
                continue
            target = hf_name(name, arch)
            info = gguf.tensors[name]
            m = _BLOCK_RE.fullmatch(name)
            rows_permuted = permuted and m and m.group(2) in heads
            if keep_quantized and info.ggml_type not in FLOAT_TYPES and len(info.shape) in (2, 3):
                blocks = gguf.raw(name).reshape(int(np.prod(info.shape[:-1])), -1)
                blocks = unpermute_rotary(blocks, heads[m.group(2)]) if rows_permuted else blocks.copy()
                state[target] = QuantizedTensor(info.ggml_type, info.shape, blocks)
                continue
            w = gguf.dequantize(name)
            if rows_permuted:
                w = unpermute_rotary(w, heads[m.group(2)])
            if arch == "gemma3" and name.endswith("norm.weight"):
                w -= 1.0  # the converter stored 1 + w
            state[target] = torch.from_numpy(w)
        return config, state
    finally:
        gguf.close()
