"""greedy_generate on a tiny model: the same tokens as transformers' greedy `generate`, and its
stopping rules."""

from __future__ import annotations

import pytest
import torch

from chatforge.models.generate import greedy_generate
from chatforge.models.loader import load_model
from chatforge.models.source import resolve_model

PROMPT = [5, 17, 3, 88, 41, 9]


@pytest.fixture
def tiny(tiny_hf_folder):
    folder, hf = tiny_hf_folder("mistral_sliding")  # window 4: decode must slide past old keys
    model, _ = load_model(resolve_model(str(folder)))
    return model, hf


def test_equals_transformers_generate(tiny):
    model, hf = tiny
    ours = greedy_generate(model, PROMPT, 20, eos_token_ids=())
    with torch.inference_mode():
        out = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                          max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours == out[0, len(PROMPT):].tolist()
    assert len(ours) == 20 and len(set(ours)) > 3  # a real continuation, not one repeated id


def test_stops_at_eos_and_includes_it(tiny):
    model, _ = tiny
    free = greedy_generate(model, PROMPT, 12, eos_token_ids=())
    eos = free[4]
    first = free.index(eos)
    assert greedy_generate(model, PROMPT, 12, eos_token_ids=[eos]) == free[: first + 1]


def test_edge_cases(tiny):
    model, _ = tiny
    assert greedy_generate(model, PROMPT, 0) == []
    with pytest.raises(ValueError, match="prompt_ids must not be empty"):
        greedy_generate(model, [], 4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        greedy_generate(model, PROMPT, -1)
