"""The bundled SmolLM2-135M-Instruct GGUF: chatforge's weights equal transformers' tensor for
tensor, loading is fast, and greedy decoding matches transformers' `generate` token for token."""

from __future__ import annotations

import time

import pytest
import torch

from chatforge.models.generate import greedy_generate
from chatforge.models.loader import load_model
from chatforge.models.source import resolve_model

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Explain how photosynthesis works."}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "List five fruits and their colours."}],
]
NEW_TOKENS = 64


def test_config_from_gguf_metadata(bundled_model):
    _, config = bundled_model
    assert (config.architecture, config.num_hidden_layers, config.hidden_size) == ("LlamaForCausalLM", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (1536, 49152, 8192)
    assert config.rope_theta == 100000.0 and config.rope_scaling is None
    assert config.tie_word_embeddings and config.eos_token_ids == [2] and config.bos_token_id == 1


def test_every_tensor_equals_transformers(bundled_model, hf_bundled_model):
    model, _ = bundled_model
    ours = model.state_dict()
    theirs = hf_bundled_model.state_dict()
    assert set(ours) == set(theirs) - {"lm_head.weight"}  # tied: one embedding matrix
    assert len(ours) == 272
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    assert torch.equal(theirs["lm_head.weight"], ours["model.embed_tokens.weight"])


def test_loading_is_fast(bundled_gguf):
    start = time.perf_counter()
    model, _ = load_model(resolve_model(None))
    elapsed = time.perf_counter() - start
    print(f"bundled model loaded in {elapsed:.2f} s")
    assert model.model.embed_tokens.weight.shape == (49152, 576)
    assert elapsed < 10.0  # measured ~3 s on 2 cores; generous for a loaded CI machine


@pytest.mark.slow
@pytest.mark.parametrize("chat", CHATS, ids=["capital", "story", "system", "code", "multi-turn"])
def test_greedy_equals_transformers_generate(chat, bundled_model, hf_bundled_model, hf_bundled_tokenizer):
    model, config = bundled_model
    prompt = hf_bundled_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
    ours = greedy_generate(model, prompt, NEW_TOKENS, config.eos_token_ids)
    with torch.inference_mode():
        out = hf_bundled_model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=config.eos_token_ids, pad_token_id=2,
        )
    theirs = out[0, len(prompt):].tolist()
    assert ours == theirs
    assert len(ours) >= 8


def test_full_path_with_chatforge_text(bundled_model, hf_bundled_tokenizer):
    """chatforge's own tokenizer and chat template feed the model: the prompt ids equal
    transformers', and the answer decodes to the expected text."""
    from chatforge.text.chat_template import ChatTemplate
    from chatforge.text.tokenizer import load_tokenizer

    model, config = bundled_model
    tokenizer = load_tokenizer(resolve_model(None))
    chat = CHATS[0]
    prompt = tokenizer.encode(ChatTemplate.for_tokenizer(tokenizer).render(chat, add_generation_prompt=True))
    expected = hf_bundled_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
    assert prompt == list(expected["input_ids"] if isinstance(expected, dict) else expected)
    answer = greedy_generate(model, prompt, NEW_TOKENS, config.eos_token_ids)
    assert answer[-1] == 2  # ended by <|im_end|>, not by the length limit
    assert tokenizer.decode(answer) == "The capital of France is Paris."
