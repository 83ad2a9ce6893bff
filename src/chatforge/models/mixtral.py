"""Mixtral's sparse mixture-of-experts feed-forward block, and its checkpoints' expert layout.

Each token is routed to `num_experts_per_tok` (top-2) of `num_experts` (8) SwiGLU experts: the
router's logits go through a softmax over all experts (in float32), the top-k probabilities are
kept and renormalised to sum to one, and the token's output is the weighted sum of its experts'
outputs (transformers' `MixtralSparseMoeBlock`, the same arithmetic as the reference code).

Dispatch is batched per expert, not per token: the (token, slot) pairs are sorted by expert, so
each expert multiplies all of its tokens in one matmul, and the weighted outputs are added back
into their tokens' rows with one `index_add_`. A Python loop runs over the experts only.

The experts' weights are stored stacked, [E, out, in] per projection, under
`mlp.experts.{gate,up,down}_proj`; the router is `mlp.gate`. `stack_expert_weights` turns the
other layouts into that one: Hugging Face files (`block_sparse_moe.experts.N.w1/w3/w2`, what
transformers still saves), transformers 5's fused `gate_up_proj`, and old GGUF files with one
tensor per expert (mapped to the Hugging Face names by gguf_weights.py). The native backend
keeps a GGUF's experts quantized, one matrix per expert: `take_layer_experts` reads any of these
layouts that way, stacked QuantizedTensors (gguf_weights.py) included.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from chatforge.models.config import ModelConfig
from chatforge.models.errors import WeightsMismatchError
from chatforge.models.gguf_weights import QuantizedTensor


class Experts(nn.Module):
    """The experts' SwiGLU weights, one stacked tensor per projection."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.up_proj = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))

    def run(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """x: [n, hidden] -> expert `expert`'s SwiGLU output, [n, hidden]."""
        return F.linear(F.silu(F.linear(x, self.gate_proj[expert])) * F.linear(x, self.up_proj[expert]),
                        self.down_proj[expert])


class SparseMoeBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)  # the router
        self.experts = Experts(config.num_experts, config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden]."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)  # [T, E]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [T, k] each
        weights = weights / weights.sum(dim=-1, keepdim=True)
        flat = chosen.reshape(-1)  # [T * k] the expert of each (token, slot) pair
        order = torch.argsort(flat, stable=True)  # pairs grouped by expert
        tokens = order // self.top_k  # [T * k] the token of each grouped pair
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()  # one host sync per layer
        rows = x[tokens]  # [T * k, hidden]
        out = torch.empty_like(rows)
        start = 0
        for expert, n in enumerate(counts):
            if n:
                out[start : start + n] = self.experts.run(expert, rows[start : start + n])
                start += n
        weighted = (out.float() * weights.reshape(-1)[order, None]).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, tokens, weighted)


_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")
_HF_ROUTER = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight")
_FUSED_GATE_UP = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj")
_W_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def stack_expert_weights(state: dict[str, torch.Tensor], num_experts: int) -> dict[str, torch.Tensor]:
    """`state` with every expert layout turned into the stacked one (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    per_expert: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        if m := _HF_EXPERT.fullmatch(name):
            per_expert.setdefault((m.group(1), _W_NAMES[m.group(3)]), {})[int(m.group(2))] = tensor
        elif m := _HF_ROUTER.fullmatch(name):
            out[f"model.layers.{m.group(1)}.mlp.gate.weight"] = tensor
        elif m := _FUSED_GATE_UP.fullmatch(name):
            gate, up = tensor.chunk(2, dim=1)  # [E, 2 ff, d]: the gate's rows first
            out[f"model.layers.{m.group(1)}.mlp.experts.gate_proj"] = gate
            out[f"model.layers.{m.group(1)}.mlp.experts.up_proj"] = up
        else:
            out[name] = tensor
    for (layer, proj), experts in per_expert.items():
        missing = sorted(set(range(num_experts)) - set(experts))
        extra = sorted(set(experts) - set(range(num_experts)))
        if missing or extra:
            raise WeightsMismatchError(
                f"layer {layer} {proj}: experts {missing} missing, {extra} unexpected (the model has {num_experts})"
            )
        out[f"model.layers.{layer}.mlp.experts.{proj}"] = torch.stack([experts[i] for i in range(num_experts)])
    return out


_PROJECTIONS = (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))


def take_layer_experts(state: dict, layer: int, num_experts: int) -> tuple[object, list[tuple[object, object, object]]]:
    """Layer `layer`'s router and its experts' (gate, up, down) matrices, each [out, in], popped
    from `state` whatever its layout (module docstring): torch tensors or QuantizedTensors, never
    dequantized or copied."""
    p = f"model.layers.{layer}."
    router = _pop_any(state, p + "mlp.gate.weight", p + "block_sparse_moe.gate.weight")
    if router is None:
        raise WeightsMismatchError(f"layer {layer}: no router (mlp.gate.weight)")
    stacked = {proj: state.pop(f"{p}mlp.experts.{proj}", None) for proj, _ in _PROJECTIONS}
    if (fused := state.pop(f"{p}mlp.experts.gate_up_proj", None)) is not None:
        stacked["gate_proj"], stacked["up_proj"] = fused.chunk(2, dim=1)
    columns = []
    for proj, w in _PROJECTIONS:
        if stacked[proj] is not None:
            matrices = stacked[proj].experts() if isinstance(stacked[proj], QuantizedTensor) else list(stacked[proj].unbind(0))
        else:
            matrices = [state.pop(f"{p}block_sparse_moe.experts.{e}.{w}.weight", None) for e in range(num_experts)]
        missing = [e for e, m in enumerate(matrices) if m is None]
        if missing or len(matrices) != num_experts:
            raise WeightsMismatchError(
                f"layer {layer} {proj}: {len(matrices) - len(missing)} experts found, {missing} missing (the model has {num_experts})"
            )
        columns.append(matrices)
    return router, list(zip(*columns))


def _pop_any(state: dict, *names: str):
    for name in names:
        if name in state:
            return state.pop(name)
    return None
