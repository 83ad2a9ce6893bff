"""The service's own logic against a scripted engine: the real tokenizer and chat template of the
bundled model (the text layer is the service's partner here), and a fake `AsyncEngine` that
answers each request with outputs a test writes down. The real engine behind the same service
runs in tests/api (a live server) and tests/engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput
from chatforge.engine.sampling_params import SamplingParams
from chatforge.models.gguf_file import GGUFFile
from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.settings import ModelPrice
from chatforge.text.chat_template import ChatTemplate
from chatforge.text.structured import StructuredOutput
from chatforge.text.tokenizer import Tokenizer


@dataclass
class Submitted:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


# script(prompt_ids, params) -> the outputs to yield, or an exception to raise at the first one
Script = Callable[[list[int], SamplingParams], "list[RequestOutput] | BaseException"]


@dataclass
class ScriptedEngine:
    """An AsyncEngine stand-in: records what it was asked, answers from `script`, and notes
    the requests the service finished or abandoned early."""

    script: Script
    submitted: list[Submitted] = field(default_factory=list)
    finished: list[tuple[str, FinishReason]] = field(default_factory=list)
    closed_early: list[str] = field(default_factory=list)

    async def generate(self, request_id, prompt_ids, params):
        self.submitted.append(Submitted(request_id, list(prompt_ids), params))
        answer = self.script(list(prompt_ids), params)
        if isinstance(answer, BaseException):
            raise answer
        done = False
        try:
            for out in answer:
                done = out.finished
                yield out
        finally:
            if not done:
                self.closed_early.append(request_id)

    def finish(self, request_id, reason=FinishReason.STOP_SEQUENCE):
        self.finished.append((request_id, reason))


def output(request_id="r", *completions: CompletionOutput, prompt_tokens=5, cached=0, finished=False,
           prompt_logprobs=None) -> RequestOutput:
    return RequestOutput(request_id, prompt_tokens, cached, list(completions), finished, prompt_logprobs)


def step(index: int, ids: list[int], generated: int, finish: FinishReason | None = None, logprobs=None) -> CompletionOutput:
    return CompletionOutput(index, ids, logprobs, generated, finish)


@pytest.fixture(scope="session")
def tokenizer(bundled_gguf) -> Tokenizer:
    gguf = GGUFFile(bundled_gguf)
    try:
        return Tokenizer.from_gguf(gguf.metadata)
    finally:
        gguf.close()


@pytest.fixture(scope="session")
def structured(tokenizer) -> StructuredOutput:
    return StructuredOutput(tokenizer, mask_threads=1)


@pytest.fixture
def make_catalog(tokenizer, structured):
    def make(script: Script, context_length: int = 8192, price: ModelPrice | None = None):
        engine = ScriptedEngine(script)
        model = ServedModel(
            model_id="HuggingFaceTB/SmolLM2-135M-Instruct", tokenizer=tokenizer,
            template=ChatTemplate.for_tokenizer(tokenizer), engine=engine, structured=structured,
            context_length=context_length,
            created=0, price=price or ModelPrice(input=0.5, output=1.5), aliases=("smollm2",),
        )
        return ModelCatalog([model]), engine

    return make


def ids_of(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)
