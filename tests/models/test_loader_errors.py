"""What a user sees when a model cannot be served: a typed error that names the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatforge.models.errors import ModelError, UnsupportedArchitectureError, WeightsMismatchError
from chatforge.models.loader import load_model
from chatforge.models.registry import model_class, supported_architectures
from chatforge.models.source import ModelNotFoundError, ModelSource, resolve_model


def test_model_that_cannot_be_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match=f"no model at {tmp_path / 'nope'}"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="no GGUF file at"):
        load_model(ModelSource("x", tmp_path / "gone.gguf", "gguf"))


def test_folder_without_weights(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no model.safetensors or model.safetensors.index.json in"):
        load_model(resolve_model(str(folder)))


def test_index_naming_a_missing_shard(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases", max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (folder / shard).unlink()
    with pytest.raises(ModelNotFoundError, match=f"lists shards that do not exist: .*{shard}"):
        load_model(resolve_model(str(folder)))


def test_unsupported_architecture(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    supported = ["Gemma3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
                 "Qwen2ForCausalLM", "Qwen3ForCausalLM"]
    expected = f"'GPTNeoXForCausalLM' is not supported; supported: {', '.join(supported)}"
    with pytest.raises(UnsupportedArchitectureError, match=expected):
        load_model(resolve_model(str(folder)))
    assert supported_architectures() == supported
    with pytest.raises(UnsupportedArchitectureError):
        model_class("Gemma2ForCausalLM")


def rewrite_weights(folder, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases")
    rewrite_weights(folder, lambda s: s.pop("model.layers.1.self_attn.o_proj.bias"))
    with pytest.raises(WeightsMismatchError, match=r"^missing tensors: model\.layers\.1\.self_attn\.o_proj\.bias$"):
        load_model(resolve_model(str(folder)))


def test_unexpected_tensor(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases")
    rewrite_weights(folder, lambda s: s.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(96, 64)}))
    with pytest.raises(WeightsMismatchError, match=r"^unexpected tensors: model\.layers\.2\.mlp\.up_proj\.weight$"):
        load_model(resolve_model(str(folder)))


def test_wrong_shape(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases")
    rewrite_weights(folder, lambda s: s.update({"model.norm.weight": torch.ones(32)}))
    with pytest.raises(WeightsMismatchError, match=r"wrong shapes: model\.norm\.weight \(32,\) \(expected \(64,\)\)"):
        load_model(resolve_model(str(folder)))


def test_derived_rope_buffers_in_old_checkpoints_are_ignored(tiny_hf_folder):
    folder, _ = tiny_hf_folder("llama_biases")
    rewrite_weights(folder, lambda s: s.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    model, _ = load_model(resolve_model(str(folder)))
    assert model.model.rotary_emb.inv_freq.shape == (8,)


def test_bad_config_json_and_source_kind(tiny_hf_folder, tmp_path):
    folder, _ = tiny_hf_folder("llama_biases")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json is not valid JSON"):
        load_model(resolve_model(str(folder)))
    with pytest.raises(ModelError, match="unknown model source kind 'onnx'"):
        load_model(ModelSource("x", tmp_path, "onnx"))


def test_bfloat16_load(tiny_hf_folder):
    folder, _ = tiny_hf_folder("qwen2_bias_tied")
    model, _ = load_model(resolve_model(str(folder)), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay exact
    caches = model.allocate_kv_caches(num_blocks=2, block_size=4)
    assert caches[0][0].dtype == torch.bfloat16 and caches[0][0].shape == (8, 2, 16)
