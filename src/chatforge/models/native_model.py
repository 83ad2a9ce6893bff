"""The native backend: a model plan built once at load time, one C call per engine step.

`NativeModel` packs every weight into its kernel's format (models/native_formats.py: a GGUF's
block-quantized matrices without a float copy, float weights as float32) and copies it into one mapping of
(huge) pages (native/memory.c), one weight at a time, dropping the checkpoint's tensor as it
goes: no weight is held twice, no float copy of a quantized one is made. It hands the plan to C
(native/model.h: the plan's contract, batch invariance included). `execute` marshals the step's
token ids, lengths and block tables into arrays and makes one call; the KV cache is float16, per
layer [n_blocks, kv_heads, block_size, head_dim] for K and for V. `native_support` says which
configs the plan computes (the Llama family, Qwen3, Gemma 3 and Mixtral today); the others
run on the torch backend (models/backend.py). Mixtral's experts are one matrix each, in their
file's format (a GGUF's stacked experts without a float copy: mixtral.take_layer_experts).

Threads: the plan owns a pool of `threads` threads (the caller included; default: the CPUs this
process may use). One step runs at a time per plan (engines sharing a plan take turns).

Extending the plan (issue "models"): new formats are a packing function and a C kernel; new
architectures add fields at the end of native/model.h's structs (mirrored in `_Desc`, `_Layer`
here, in the same order) and the step that reads them in native/forward.c.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from chatforge.models import native
from chatforge.models.config import ModelConfig
from chatforge.models.errors import ModelError, WeightsMismatchError
from chatforge.models.gguf_weights import QuantizedTensor
from chatforge.models.mixtral import take_layer_experts
from chatforge.models.native_formats import (
    F32, native_format, native_format_of_type, pack, packed_matrix_nbytes, packed_nbytes, row_slices,
)
from chatforge.models.rotary import inverse_frequencies
from chatforge.models.step import StepInputs

_i64, _f32, _p = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
MAX_PARTS = 3
MAX_EXPERTS = 256  # native/model.h's CF_MAX_EXPERTS


class _Matrix(ctypes.Structure):
    _fields_ = [("format", _i64), ("N", _i64), ("K", _i64), ("group_bytes", _i64), ("data", _p)]


class _Linear(ctypes.Structure):
    _fields_ = [("n_parts", _i64), ("parts", _Matrix * MAX_PARTS), ("bias", _p)]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", _p), ("ffn_norm", _p), ("qkv", _Linear), ("o", _Linear), ("gate_up", _Linear),
        ("down", _Linear), ("sliding_window", _i64),
        ("q_norm", _p), ("k_norm", _p), ("post_attn_norm", _p), ("post_ffn_norm", _p),
        ("n_experts", _i64), ("top_k", _i64), ("router", _Linear), ("expert_gate_up", _p), ("expert_down", _p),
    ]


class _Desc(ctypes.Structure):
    _fields_ = [
        ("n_layers", _i64), ("hidden", _i64), ("n_heads", _i64), ("n_kv_heads", _i64), ("head_dim", _i64),
        ("ffn", _i64), ("vocab", _i64), ("rms_eps", _f32), ("embed_scale", _f32), ("attn_scale", _f32),
        ("pad_", _f32), ("inv_freq", _p), ("final_norm", _p), ("embed", _Matrix), ("lm_head", _Matrix),
        ("layers", ctypes.POINTER(_Layer)), ("activation", _i64), ("inv_freq_local", _p),
        ("logit_softcap", _f32), ("pad2_", _f32),
    ]


class _Step(ctypes.Structure):
    _fields_ = [
        ("n_tokens", _i64), ("token_ids", _p), ("n_seqs", _i64), ("query_lens", _p), ("context_lens", _p),
        ("block_tables", _p), ("max_blocks", _i64), ("n_sample", _i64), ("sample_rows", _p), ("logits", _p),
        ("k_cache", _p), ("v_cache", _p), ("n_blocks", _i64), ("block_size", _i64),
    ]


_STRUCTS = [_Matrix, _Linear, _Layer, _Desc, _Step]  # cf_sizeof(0..4)


# The architectures the plan computes today (native/model.h says how others are added).
NATIVE_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM",
                        "MixtralForCausalLM")
GEMMA3 = "Gemma3ForCausalLM"
_ACTIVATIONS = {"silu": 0, "gelu_pytorch_tanh": 1}  # native/model.h's CF_ACT_FN_*


def native_support(c: ModelConfig) -> str | None:
    """None when the native plan computes a model of this config, else why not."""
    if c.architecture not in NATIVE_ARCHITECTURES:
        return f"{c.architecture} is not in the native plan yet"
    if c.hidden_act not in _ACTIVATIONS:
        return f"the native plan has no activation {c.hidden_act} yet"
    if c.num_experts > MAX_EXPERTS:
        return f"the native plan takes at most {MAX_EXPERTS} experts per layer, not {c.num_experts}"
    if c.head_dim % 8 or c.head_dim > 512 or c.hidden_size % 8:
        return f"the native kernels need head_dim and hidden_size multiples of 8 (head_dim <= 512), not {c.head_dim} and {c.hidden_size}"
    return None


def native_weights_bytes(source) -> int:
    """The bytes a model's packed weights take: a GGUF's matrices in a format with a kernel
    (native_formats.py) as packed, everything else float32."""
    from chatforge.models.gguf_file import GGUFFile
    from chatforge.models.memory import weights_bytes

    if source.kind != "gguf":
        return weights_bytes(source.kind, source.path, torch.float32)
    gguf = GGUFFile(source.path)
    try:
        total = 0
        for t in gguf.tensors.values():
            fmt = native_format_of_type(t.ggml_type)
            if fmt != F32 and len(t.shape) in (2, 3):  # a matrix, or Mixtral's stacked experts
                total += int(np.prod(t.shape[:-2])) * packed_matrix_nbytes(fmt, *t.shape[-2:])
            else:
                total += 4 * int(np.prod(t.shape))
        return total
    finally:
        gguf.close()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Pages:
    """Memory from native/memory.c (2 MiB pages where the kernel gives them), as a uint8 array;
    returned to the system when the last reference goes."""

    def __init__(self, lib, size: int):
        address = lib.cf_alloc_pages(size)
        if not address:
            raise MemoryError(f"could not map {size} bytes")
        self.array = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address))
        self.address = address
        weakref.finalize(self, lib.cf_free_pages, address, size)


@dataclass
class NativeKVCache:
    k: list[torch.Tensor]  # per layer, float16 [n_blocks, kv_heads, block_size, head_dim]
    v: list[torch.Tensor]
    num_blocks: int
    block_size: int
    pointers: tuple[ctypes.Array, ctypes.Array]  # the layers' data pointers, for the step
    pages: Pages  # the memory under k and v


class NativeModel:
    """A ModelBackend (models/step.py) on chatforge's C kernels."""

    def __init__(self, config: ModelConfig, state: dict[str, torch.Tensor | QuantizedTensor], threads: int | None = None):
        """`state`: the checkpoint's tensors by Hugging Face name; each is taken out of it (popped)
        as it is packed, so the caller's copy of a weight goes as soon as the plan holds it."""
        lib = native.library()
        for index, struct in enumerate(_STRUCTS):
            if lib.cf_sizeof(index) != ctypes.sizeof(struct):
                raise native.NativeKernelsUnavailable(f"native/model.h and {struct.__name__} disagree on the layout")
        self.config = config
        self.device = torch.device("cpu")
        self.computes_in_torch = False
        self.threads = threads or available_cpus()
        self._lib = lib
        why_not = native_support(config)
        if why_not is not None:
            raise ModelError(why_not)
        self._keep: list[object] = []  # every array the C plan points into
        experts = [take_layer_experts(state, i, config.num_experts) for i in range(config.num_hidden_layers)] \
            if config.num_experts else None
        _check_names(config, state)
        desc = self._describe(config, state, experts)
        error = ctypes.create_string_buffer(512)
        handle = ctypes.c_void_p()
        if lib.cf_model_new(ctypes.byref(desc), self.threads, ctypes.byref(handle), error, len(error)):
            raise ModelError(f"the native model plan was refused: {error.value.decode()}")
        self._desc = desc
        self._handle = handle
        self._lock = threading.Lock()
        self._logits = torch.empty(0, config.vocab_size)

    # -- building the plan ---------------------------------------------------------------------

    def _array(self, values) -> int:
        """A float32 array the plan points at, kept alive with the model."""
        a = np.ascontiguousarray(values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float32)
        self._keep.append(a)
        return a.ctypes.data

    def _linear_groups(self, state: dict, names: list[str]) -> tuple[list[list], int | None]:
        """Several projections side by side: one matrix where consecutive ones share a format,
        else parts (their weights, in order); and the concatenated bias (address), if any."""
        weights = [state.pop(f"{n}.weight") for n in names]
        groups = _format_groups(weights, names)
        biases = [state.pop(f"{n}.bias", None) for n in names]
        bias = None
        if any(b is not None for b in biases):
            sizes = [w.shape[0] for w in weights]
            bias = self._array(torch.cat([b.float() if b is not None else torch.zeros(n) for b, n in zip(biases, sizes)]))
        return groups, bias

    def _describe(self, c: ModelConfig, state: dict, experts: list | None) -> _Desc:
        """The plan's description. Each weight is popped from `state`, packed and copied into one
        mapping of (huge) pages (sized beforehand), then dropped: no weight is held twice for
        longer than its own packing. `experts`: per layer, Mixtral's (router, experts' matrices)."""
        projections = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
                       "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}
        layers = (_Layer * c.num_hidden_layers)()
        linears = []  # (where the linear goes: a function of it, groups of weights, bias)
        gemma = c.architecture == GEMMA3
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            for field, name in _norm_names(c).items():
                # Gemma's norms scale by 1 + weight: folded in once here
                setattr(layers[i], field, self._array(state.pop(p + name) + (1.0 if gemma else 0.0)))
            layers[i].sliding_window = c.layer_sliding_window(i) or 0
            for field, names in projections.items():
                if experts and field in ("gate_up", "down"):
                    continue
                linears.append([partial(setattr, layers[i], field), *self._linear_groups(state, [p + n for n in names])])
            if experts:
                linears += self._experts(layers[i], c, *experts[i])
        embed = [state.pop("model.embed_tokens.weight")]
        head = None if c.tie_word_embeddings else [state.pop("lm_head.weight")]
        state.pop("lm_head.weight", None)
        every = [embed] + ([head] if head else []) + [g for _, groups, _ in linears for g in groups]
        sizes = [-(-packed_nbytes(g) // 64) * 64 for g in every]
        self._weights = Pages(self._lib, sum(sizes))
        self.weight_bytes = sum(sizes)
        offset = 0

        def place(weights: list) -> _Matrix:
            nonlocal offset
            start, done, N = offset, 0, sum(w.shape[0] for w in weights)
            # a big matrix (the embedding) a slice of rows at a time: no full-size temporaries
            for part in row_slices(weights):
                packed = pack(part)
                self._weights.array[start + done : start + done + packed.nbytes] = packed.data
                done += packed.nbytes
            weights.clear()
            offset += -(-done // 64) * 64
            return _Matrix(packed.format, N, packed.K, packed.group_bytes, self._weights.address + start)

        embed_matrix = place(embed)
        head_matrix = place(head) if head else embed_matrix
        for put, groups, bias in linears:
            lin = _Linear(n_parts=len(groups), bias=bias)
            for k, group in enumerate(groups):
                lin.parts[k] = place(group)
            put(lin)
        self._keep.append(layers)
        local = c.rope_local_theta
        return _Desc(
            n_layers=c.num_hidden_layers, hidden=c.hidden_size, n_heads=c.num_attention_heads,
            n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, ffn=c.intermediate_size, vocab=c.vocab_size,
            rms_eps=c.rms_norm_eps, embed_scale=float(np.float32(c.hidden_size**0.5)) if gemma else 1.0,
            attn_scale=c.attention_scale, inv_freq=self._array(inverse_frequencies(c)),
            final_norm=self._array(state.pop("model.norm.weight") + (1.0 if gemma else 0.0)),
            embed=embed_matrix, lm_head=head_matrix, layers=layers, activation=_ACTIVATIONS[c.hidden_act],
            logit_softcap=c.final_logit_softcapping or 0.0,
            inv_freq_local=self._array(inverse_frequencies(replace(c, rope_theta=local, rope_scaling=None))) if local else None,
        )

    def _experts(self, layer: _Layer, c: ModelConfig, router, matrices: list[tuple]) -> list[list]:
        """A Mixtral layer's router and experts: its fields set, the linears to pack (as in
        `_describe`): the router, then per expert gate and up side by side, and down."""
        E = c.num_experts
        gate_up, down = (_Linear * E)(), (_Linear * E)()
        self._keep += [gate_up, down]
        layer.n_experts, layer.top_k = E, c.num_experts_per_tok
        layer.expert_gate_up, layer.expert_down = ctypes.addressof(gate_up), ctypes.addressof(down)
        out = [[partial(setattr, layer, "router"), _format_groups([router], ["router"]), None]]
        for e, (gate, up, dn) in enumerate(matrices):
            out.append([partial(gate_up.__setitem__, e), _format_groups([gate, up], [f"expert {e} gate", "up"]), None])
            out.append([partial(down.__setitem__, e), [[dn]], None])
        return out

    # -- the backend ---------------------------------------------------------------------------

    def kv_block_bytes(self, block_size: int) -> int:
        c = self.config
        return 2 * c.num_hidden_layers * block_size * c.num_key_value_heads * c.head_dim * 2

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> NativeKVCache:
        """float16 in one mapping of (huge) pages; a slot is always written before it is read, and
        pages never touched cost no memory."""
        c = self.config
        shape = (num_blocks, c.num_key_value_heads, block_size, c.head_dim)
        per_layer = num_blocks * c.num_key_value_heads * block_size * c.head_dim
        pages = Pages(self._lib, 2 * c.num_hidden_layers * per_layer * 2)
        halves = torch.from_numpy(pages.array.view(np.float16))
        layers = [halves[i * per_layer : (i + 1) * per_layer].view(shape) for i in range(2 * c.num_hidden_layers)]
        k, v = layers[: c.num_hidden_layers], layers[c.num_hidden_layers :]
        pointers = tuple((_p * len(ts))(*[t.data_ptr() for t in ts]) for ts in (k, v))
        return NativeKVCache(k, v, num_blocks, block_size, pointers, pages)

    def execute(self, step: StepInputs, kv_cache: NativeKVCache) -> torch.Tensor:
        tables = step.block_tables
        width = max(len(t) for t in tables)
        block_tables = np.zeros((len(tables), width), dtype=np.int32)
        for i, table in enumerate(tables):
            block_tables[i, : len(table)] = table
        ids = np.asarray(step.token_ids, dtype=np.int32)
        query_lens = np.asarray(step.query_lens, dtype=np.int32)
        context_lens = np.asarray(step.context_lens, dtype=np.int32)
        sample_rows = np.asarray(step.sample_rows, dtype=np.int32)
        S = len(sample_rows)
        if self._logits.shape[0] < S:
            self._logits = torch.empty(max(S, 2 * self._logits.shape[0]), self.config.vocab_size)
        logits = self._logits[:S]
        s = _Step(
            n_tokens=len(ids), token_ids=ids.ctypes.data, n_seqs=len(query_lens), query_lens=query_lens.ctypes.data,
            context_lens=context_lens.ctypes.data, block_tables=block_tables.ctypes.data, max_blocks=width,
            n_sample=S, sample_rows=sample_rows.ctypes.data, logits=logits.data_ptr(),
            k_cache=ctypes.addressof(kv_cache.pointers[0]), v_cache=ctypes.addressof(kv_cache.pointers[1]),
            n_blocks=kv_cache.num_blocks, block_size=kv_cache.block_size,
        )
        with self._lock:
            status = self._lib.cf_model_step(self._handle, ctypes.byref(s))
            if status:
                message = self._lib.cf_model_error(self._handle).decode()
                raise (MemoryError if status == -1 else ValueError)(message)
        return logits

    def step_logits(self, rows: list[int]) -> torch.Tensor:
        """float32 logits [len(rows), vocab] of other rows of the step just run (flat rows of its
        StepInputs; at most as many as it had tokens). Call it right after `execute`, before any
        other step of this model."""
        ids = np.asarray(rows, dtype=np.int32)
        out = torch.empty(len(ids), self.config.vocab_size)
        with self._lock:
            if self._lib.cf_model_logits(self._handle, ids.ctypes.data, len(ids), out.data_ptr()):
                raise ValueError(self._lib.cf_model_error(self._handle).decode())
        return out

    def pool_stats(self) -> dict[str, int]:
        out = (_i64 * 4)()
        self._lib.cf_model_pool_stats(self._handle, out)
        return dict(zip(("jobs", "solo_jobs", "stalls", "fallbacks"), out))

    PROFILE_OPS = ("embed", "norm", "qkv", "rope", "attention", "o", "gate_up", "swiglu", "down", "lm_head")

    def profile(self, enable: bool = True) -> dict[str, float]:
        """The calling thread's CPU seconds per kind of op since the last call (native/model.h);
        counting restarts, on or off. Where a step goes, with threads=1 (benchmarks only)."""
        out = (_i64 * len(self.PROFILE_OPS))()
        self._lib.cf_model_profile(self._handle, int(enable), out)
        return {name: ns / 1e9 for name, ns in zip(self.PROFILE_OPS, out)}

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.cf_model_free(handle)
            self._handle = None


def _format_groups(weights: list, names: list[str]) -> list[list]:
    """Consecutive weights that share a format as one group (one matrix), in order."""
    groups: list[list] = []
    for w in weights:
        if groups and native_format(groups[-1][0]) == native_format(w):
            groups[-1].append(w)
        else:
            groups.append([w])
    if len(groups) > MAX_PARTS:
        raise ModelError(f"{names}: more than {MAX_PARTS} formats in one projection")
    return groups


def _norm_names(c: ModelConfig) -> dict[str, str]:
    """native/model.h's per-layer norm fields -> the checkpoint's names (under model.layers.N.)."""
    if c.architecture == GEMMA3:
        names = {"attn_norm": "input_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                 "post_attn_norm": "post_attention_layernorm", "post_ffn_norm": "post_feedforward_layernorm"}
    else:
        names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    if c.qk_norm:
        names |= {"q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}
    return {field: f"{name}.weight" for field, name in names.items()}


def _check_names(c: ModelConfig, state: dict) -> None:
    """The checkpoint has exactly the tensors the architecture reads (as the torch loader checks)."""
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    if not c.tie_word_embeddings:
        expected.add("lm_head.weight")
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        expected |= {p + name for name in _norm_names(c).values()}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            expected.add(f"{p}self_attn.{proj}.weight")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            if not c.num_experts:  # Mixtral's were taken already (take_layer_experts)
                expected.add(f"{p}mlp.{proj}.weight")
        if c.attention_bias:
            expected |= {f"{p}self_attn.{x}_proj.bias" for x in "qkv"}
        if c.o_proj_bias:
            expected.add(f"{p}self_attn.o_proj.bias")
        if c.mlp_bias:
            expected |= {f"{p}mlp.{x}_proj.bias" for x in ("gate", "up", "down")}
    names = set(state)
    if c.tie_word_embeddings:
        names.discard("lm_head.weight")
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        raise WeightsMismatchError(f"missing tensors: {missing[:8]}; unexpected tensors: {unexpected[:8]}")
