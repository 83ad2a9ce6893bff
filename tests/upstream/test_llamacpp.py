"""llama.cpp's server as a third-party upstream (kind `llamacpp`), when its binary is built on
this machine (`benchmarks/peer_llamacpp.sh` builds it; LLAMA_SERVER names another): the prompt
goes as token ids, the generated ids come back through its logprobs and decode to its own text,
the id that ended the answer is taken off, and what it cannot honour is refused by name. CI runs
the same client against a fake OpenAI-compatible node (test_remote_engine.py, test_fleet.py)."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest

from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams
from chatforge.models.source import bundled_gguf_path, resolve_model
from chatforge.settings import FleetConfig, UpstreamEntry
from chatforge.text.named_templates import template_for_model
from chatforge.text.tokenizer import load_tokenizer
from chatforge.upstream.client import build_client
from chatforge.upstream.health import Upstream
from chatforge.upstream.remote_engine import InvalidFieldError, RemoteEngine

from .servers import unused_url

PEER = Path("/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server")
BINARY = Path(os.environ.get("LLAMA_SERVER", PEER))

pytestmark = pytest.mark.skipif(not BINARY.is_file(), reason=f"llama.cpp's server is not built here ({BINARY})")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    url = unused_url()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    command = [str(BINARY), "-m", str(bundled_gguf_path()), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
               "-np", "2", "-c", "2048", "-t", "1"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "LD_LIBRARY_PATH": str(BINARY.parent)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                pytest.fail(f"llama-server exited: {log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def text():
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    return tokenizer, template_for_model(tokenizer, None)


def engine_on(url: str, stop_ids) -> RemoteEngine:
    config = FleetConfig()
    return RemoteEngine("smollm2", [Upstream(build_client(UpstreamEntry(url=url, kind="llamacpp"), "smollm2", config, stop_ids))],
                        config)


async def test_ids_in_ids_out_decode_to_its_own_text(llama_server, text):
    tokenizer, template = text
    prompt = tokenizer.encode(template.render([{"role": "user", "content": "What is the capital of France?"}],
                                              add_generation_prompt=True))
    engine = engine_on(llama_server, sorted(tokenizer.end_of_turn_ids))
    async with aclosing(engine.generate("l1", prompt, SamplingParams(temperature=0, max_tokens=40, logprobs=True,
                                                                     top_logprobs=2))) as outputs:
        seen = [out async for out in outputs]
    ids = [t for out in seen for c in out.outputs for t in c.new_token_ids]
    final = seen[-1].outputs[-1]
    if final.finish_reason is FinishReason.STOP:  # the id that ended it is off the text, counted
        assert final.stop_token_id in tokenizer.end_of_turn_ids and final.num_generated == len(ids) + 1
    else:
        assert final.finish_reason is FinishReason.LENGTH and final.num_generated == len(ids) == 40
    own = httpx.post(llama_server + "/v1/completions", timeout=60,
                     json={"prompt": prompt, "max_tokens": 40, "temperature": 0}).json()["choices"][0]["text"]
    assert tokenizer.decode(ids) == own and own
    logprobs = [lp for out in seen for c in out.outputs for lp in (c.new_logprobs or [])]
    assert len(logprobs) == len(ids) and all(len(lp.top) == 2 and lp.top[0][0] == lp.token_id for lp in logprobs)
    await engine.close()


async def test_what_it_cannot_honour_is_refused(llama_server, text):
    engine = engine_on(llama_server, [2])
    for params, field in ((SamplingParams(n=2), "n"), (SamplingParams(stop_token_ids=[5]), "stop_token_ids")):
        with pytest.raises(InvalidFieldError) as caught:
            async with aclosing(engine.generate("l2", [1, 2, 3], params)) as outputs:
                [out async for out in outputs]
        assert caught.value.param == field
    await engine.close()
