"""GGUF tensors -> Hugging Face state-dict tensors for the Llama family.

llama.cpp names tensors its own way (`blk.3.attn_q.weight`) and, for the "llama" architecture,
its converter permutes the rows of q/k projections so that RoPE can rotate adjacent channel
pairs (interleaved layout). Our model rotates halves (HF layout), so those rows are permuted
back here; after that the weights equal what transformers loads from the same file.
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
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Per-frequency RoPE divisors (llama3-style scaling, GGUF's form). Not a model parameter.
ROPE_FREQS = "rope_freqs.weight"


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
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
    in the Hugging Face order (q/k rows already un-permuted), for a kernel that reads the format."""

    ggml_type: int
    shape: tuple[int, int]  # [N, K]
    blocks: np.ndarray  # uint8

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
    `keep_quantized` the block-quantized matrices as QuantizedTensor (no float copy made)."""
    gguf = GGUFFile(path)
    try:
        config = ModelConfig.from_gguf_metadata(gguf.metadata, gguf.tensors.keys())
        permuted = gguf.metadata.get("general.architecture") == "llama"
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
        state: dict[str, torch.Tensor] = {}
        for name in gguf.tensors:
            if name == ROPE_FREQS:
                factors = gguf.dequantize(name).reshape(-1).tolist()
                config = replace(config, rope_scaling={"rope_type": "freq_factors", "factors": tuple(factors)})
                continue
            target = hf_name(name)
            info = gguf.tensors[name]
            m = _BLOCK_RE.fullmatch(name)
            rows_permuted = permuted and m and m.group(2) in heads
            if keep_quantized and info.ggml_type not in FLOAT_TYPES and len(info.shape) == 2:
                blocks = gguf.raw(name).reshape(info.shape[0], -1)
                blocks = unpermute_rotary(blocks, heads[m.group(2)]) if rows_permuted else blocks.copy()
                state[target] = QuantizedTensor(info.ggml_type, info.shape, blocks)
                continue
            w = gguf.dequantize(name)
            if rows_permuted:
                w = unpermute_rotary(w, heads[m.group(2)])
            state[target] = torch.from_numpy(w)
        return config, state
    finally:
        gguf.close()
