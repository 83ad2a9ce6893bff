"""New architectures behind a live server: a tiny random Mixtral, from a Hugging Face folder and
from a GGUF file written here (both on the native backend), answers in all three dialects (the Infomaniak legacy route
included) under the names users already send; a base model without a chat template is refused
chat with a 400 in each dialect's envelope; and a model too big for the memory is refused at
start with the numbers."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import httpx
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from chatforge.api.app import create_app
from chatforge.models.native_model import NativeModel
from chatforge.service.loading import load_catalog
from chatforge.settings import load_settings
from models.conftest import make_tiny_hf
from models.test_gguf_architectures import write as write_gguf

from .conftest import LiveServer

# A character vocabulary of the tiny models' 96 tokens: <unk>, <s>, </s>, the space mark, then characters.
TOKENS = ["<unk>", "<s>", "</s>", "▁", *string.ascii_letters, *string.digits, *string.punctuation[:30]]
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
TURBO = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"  # a DeepInfra name, given to the GGUF copy
BASE = "tiny-qwen3-base"
ASK = [{"role": "user", "content": "Say hi."}]


def save_char_tokenizer(folder) -> None:
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(TOKENS)}, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TOKENS[:3]])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def char_vocabulary(writer) -> None:
    """The same vocabulary as GGUF metadata: a SentencePiece-style one whose pieces are characters."""
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([0.0] * len(TOKENS))
    writer.add_token_types([2, 3, 3] + [1] * (len(TOKENS) - 3))
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    mixtral = make_tiny_hf("mixtral_4x2")
    folder = root / "tiny-mixtral"
    mixtral.save_pretrained(folder)
    save_char_tokenizer(folder)
    gguf = root / "tiny-mixtral.gguf"
    write_gguf(gguf, mixtral, "llama", vocabulary=char_vocabulary)
    base = root / BASE
    make_tiny_hf("qwen3_qk_norm_tied").save_pretrained(base)
    save_char_tokenizer(base)
    settings = load_settings(
        database_url=f"sqlite:///{root / 'chatforge.db'}",
        models=[
            {"path": str(folder), "id": MIXTRAL, "aliases": ["mixtral"], "chat_template": "mistral"},
            {"path": str(gguf), "id": "tiny-mixtral-gguf", "aliases": [TURBO], "chat_template": "mistral"},
            {"path": str(base)},
        ],
        deployments={"mixtral-dep": {"model": "mixtral"}, "base-dep": {"model": BASE}},
        engine={"threads": 1, "kv_cache_mb": 8, "max_num_seqs": 4, "max_num_batched_tokens": 64},
    )
    catalog = load_catalog(settings)
    try:
        with LiveServer(create_app(settings, catalog)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
            yield http, catalog
    finally:
        for m in catalog.models:
            m.engine.shutdown(0)


def chat(http, model, **extra) -> dict:
    r = http.post("/v1/chat/completions", json={"model": model, "messages": ASK, "max_tokens": 8, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_every_name(served):
    http, _ = served
    cards = http.get("/v1/models").json()["data"]
    assert [(c["id"], c["root"]) for c in cards] == [
        (MIXTRAL, MIXTRAL), ("mixtral", MIXTRAL), ("tiny-mixtral-gguf", "tiny-mixtral-gguf"),
        (TURBO, "tiny-mixtral-gguf"), (BASE, BASE)]


def test_both_files_of_one_mixtral_answer_alike(served):
    """Same weights, same vocabulary, same template: the folder and the GGUF file give the same
    greedy tokens, whichever of their names the request uses."""
    http, catalog = served
    assert catalog.get("mixtral").tokenizer.encode("Say hi.") == catalog.get(TURBO).tokenizer.encode("Say hi.")
    for name in ("mixtral", TURBO):  # both on the default backend, the native kernels
        assert isinstance(catalog.get(name).engine.engine.runner.backend, NativeModel)
    folder, gguf = chat(http, "mixtral"), chat(http, TURBO)
    assert folder["model"] == "mixtral" and gguf["model"] == TURBO  # the name the caller sent
    assert folder["choices"][0]["message"]["content"] == gguf["choices"][0]["message"]["content"]
    assert folder["usage"] == gguf["usage"] and folder["usage"]["completion_tokens"] > 0
    assert chat(http, MIXTRAL)["choices"] == folder["choices"]


def test_infomaniak_routes(served):
    http, _ = served
    oracle = chat(http, "mixtral")["choices"][0]["message"]["content"]
    legacy = http.post("/1/llm/10775", json={"model": "mixtral", "messages": ASK, "max_new_tokens": 8,
                                             "temperature": 0, "repetition_penalty": 1.0})
    assert legacy.status_code == 200, legacy.text
    data = legacy.json()["data"]
    assert data["model"] == "mixtral" and data["choices"][0]["message"]["content"] == oracle
    successor = http.post("/1/ai/10775/openai/chat/completions",
                          json={"model": "mixtral", "messages": ASK, "max_tokens": 8, "temperature": 0})
    assert successor.status_code == 200, successor.text
    assert successor.json()["choices"][0]["message"]["content"] == oracle


def test_egp_route(served):
    http, _ = served
    oracle = chat(http, "mixtral")["choices"][0]["message"]["content"]
    r = http.post("/v4/models/mixtral-dep/chat-completions", headers={"x-api-key": "unused"},
                  json={"chat_history": [], "prompt": "Say hi.", "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["completions"][0][1] == [oracle]


def test_chat_without_a_template_is_a_400_in_each_dialect(served):
    http, catalog = served
    assert catalog.get(BASE).template is None
    openai = http.post("/v1/chat/completions", json={"model": BASE, "messages": ASK, "max_tokens": 4})
    assert openai.status_code == 400
    error = openai.json()["error"]
    assert "has no chat template" in error["message"] and error["param"] == "model"
    legacy = http.post("/1/llm/10775", json={"model": BASE, "messages": ASK, "max_new_tokens": 4})
    assert legacy.status_code == 400 and legacy.json()["result"] == "error"
    assert "has no chat template" in json.dumps(legacy.json())
    egp = http.post("/v4/models/base-dep/chat-completions", headers={"x-api-key": "unused"},
                    json={"chat_history": [], "prompt": "Say hi.", "max_tokens": 4})
    assert egp.status_code == 400 and "has no chat template" in egp.text
    # A template sent with the request (an EGP and vLLM extension) is one.
    sent = http.post("/v4/models/base-dep/chat-completions", headers={"x-api-key": "unused"},
                     json={"chat_history": [], "prompt": "Say hi.", "max_tokens": 4, "temperature": 0,
                           "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"})
    assert sent.status_code == 200, sent.text


def serve(tmp_path, *args, env=()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatforge.cli", "serve", "--port", "1", "--database-url", f"sqlite:///{tmp_path / 'db'}", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "CHATFORGE_CACHE_DIR": str(tmp_path / "cache"), **dict(env)},
    )


def test_a_model_too_big_is_refused_at_start_with_the_numbers(tmp_path):
    done = serve(tmp_path, env={"CHATFORGE_ENGINE__KV_CACHE_MB": str(64 * 1024 * 1024)})  # a 64 TiB KV pool
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    # the native backend holds the GGUF's blocks as they are: the file's ~0.09 GiB
    assert line.startswith("error: HuggingFaceTB/SmolLM2-135M-Instruct needs 65536.09 GiB "
                           "(weights 0.09 GiB in their own formats, KV cache 65536.00 GiB) but only "), line
    assert "GiB is available (MemAvailable " in line and "Traceback" not in done.stderr


def test_model_flags_apply_to_one_model(tmp_path):
    done = serve(tmp_path, "--model", "a.gguf", "--model", "b.gguf", "--served-model-name", "x")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --chat-template, --served-model-name and --upstream apply to one model")
    done = serve(tmp_path, "--chat-template", "vicuna")
    assert done.returncode == 1
    assert "'vicuna' is neither a named template" in done.stderr.strip().splitlines()[-1]


def test_serve_gemma_gguf_with_a_named_template(tmp_path, gemma_gguf):
    """`chatforge serve --model <the Gemma 3 270M GGUF> --chat-template gemma`, as a user runs it:
    the real file on the native kernels, a chat answered under the name given on the command line."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatforge.cli", "serve", "--model", str(gemma_gguf), "--chat-template", "gemma",
         "--served-model-name", "gemma-3-270m", "--served-model-name", "gemma", "--port", str(port), "--threads", "1",
         "--database-url", f"sqlite:///{tmp_path / 'db'}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CHATFORGE_ENGINE__KV_CACHE_MB": "64"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.5)
        assert [c["id"] for c in httpx.get(f"{url}/v1/models").json()["data"]] == ["gemma-3-270m", "gemma"]
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "gemma", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        # <bos> <start_of_turn> user \n What ▁is ▁the ▁capital ▁of ▁France ? <end_of_turn> \n <start_of_turn> model \n
        assert body["model"] == "gemma" and body["usage"]["prompt_tokens"] == 16
        assert body["choices"][0]["message"]["content"].strip() and body["usage"]["completion_tokens"] > 0
        # The first constrained request builds llguidance's copy of the 262,144-token vocabulary
        # (not done at start); the answer follows the schema.
        schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"],
                  "additionalProperties": False}
        r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "gemma", "max_tokens": 48, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        assert set(json.loads(choice["message"]["content"])) == {"city"}
        proc.terminate()
        log = proc.communicate(timeout=30)[1]
        # the load's phases and memory are logged, and the grammar vocabulary came after it
        loaded = log.index("loaded gemma-3-270m from")
        assert "resident memory" in log[loaded:] and "MiB tokenizer" in log[loaded:]
        assert log.index("built the grammar engine's vocabulary (262144 tokens)") > loaded
    finally:
        proc.terminate()
        proc.wait(30)
