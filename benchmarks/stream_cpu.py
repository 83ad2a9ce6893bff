"""CPU per token of the serving path above the engine, streamed and whole, on one event loop.

    .venv/bin/python benchmarks/stream_cpu.py [--tokens 128] [--rounds 40] [--profile FILE]

A scripted engine hands out a real greedy answer of the bundled model one token per step (as the
engine thread does), and each level of the path turns it into what it sends: `service` (token ids
to text deltas and events: detokenizer, stop strings, usage), `whole` (the service's events
gathered into one answer, the non-streamed path), `sse` (the OpenAI chunks as SSE bytes) and
`response` (the streaming response writing those bytes through ASGI `send`, stall timer
included, into a send that takes them at once). Figures are process CPU time per token, so they
hold on a busy machine; what HTTP adds below `send` (uvicorn, the socket) is not in them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import time
from contextlib import aclosing

from chatforge.api.openai.translate import ChatCodec
from chatforge.api.serving import sse_frames
from chatforge.api.sse import sse_response
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput
from chatforge.models.gguf_file import GGUFFile
from chatforge.models.source import bundled_gguf_path
from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.service.chat import ChatService, gather
from chatforge.service.protocol import ChatMessage, ChatRequest, SamplingParams
from chatforge.settings import ModelPrice
from chatforge.text.chat_template import ChatTemplate
from chatforge.text.tokenizer import Tokenizer

STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. "
         "Every morning he rowed out before dawn, and every evening he came home with a basket of fish "
         "and a story for the children who waited on the pier. One day, the sea was strangely calm, and "
         "Tomas saw a light beneath the waves: a glass bottle, sealed with wax, holding a map drawn in "
         "faded ink. \"Where does it lead?\" asked little Mia. \"Somewhere we have never been,\" he said.")


class ScriptedEngine:
    """Yields `ids` one token per output, as AsyncEngine.generate does, the consumer's task
    suspended before each (a real stream waits for the engine thread's next step)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    async def generate(self, request_id, prompt_ids, params):
        n = len(self.ids)
        for i, token in enumerate(self.ids):
            done = i == n - 1
            await asyncio.sleep(0)
            yield RequestOutput(request_id, len(prompt_ids), 0, [CompletionOutput(
                0, [token], None, i + 1, FinishReason.LENGTH if done else None)], done)

    def finish(self, request_id, reason=FinishReason.STOP_SEQUENCE):
        pass


def setup(tokens: int):
    gguf = GGUFFile(bundled_gguf_path())
    try:
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
    finally:
        gguf.close()
    ids = (tokenizer.encode(STORY) * (tokens // 64 + 1))[:tokens]
    model = ServedModel(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", tokenizer=tokenizer,
                        template=ChatTemplate.for_tokenizer(tokenizer), engine=ScriptedEngine(ids), structured=None,
                        context_length=8192, created=0, price=ModelPrice(input=0.5, output=1.5))
    return ChatService(ModelCatalog([model]))


def prepared(service: ChatService, stream: bool, tokens: int):
    req = ChatRequest(request_id="chatcmpl-bench", model=None, messages=[ChatMessage("user", "Tell me a story.")],
                      params=SamplingParams(temperature=0.0, max_tokens=tokens), stream=stream)
    return service.prepare(req)


async def run_level(service: ChatService, level: str, tokens: int) -> None:
    prep = prepared(service, level != "whole", tokens)
    if level == "whole":
        await gather(prep, service.stream(prep))
        return
    if level == "service":
        async with aclosing(service.stream(prep)) as events:
            async for _ in events:
                pass
        return
    frames = sse_frames(service.stream(prep), ChatCodec(prep, "chatcmpl-bench", include_usage=True, continuous_usage=False))
    if level == "sse":
        async with aclosing(frames) as chunks:
            async for _ in chunks:
                pass
        return

    async def send(message) -> None:
        pass

    await sse_response(frames).stream_response(send)


LEVELS = ("service", "whole", "sse", "response")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=40, help="answers per level")
    ap.add_argument("--profile", help="write a cProfile of the `response` level here")
    args = ap.parse_args()
    service = setup(args.tokens)

    async def measure(level: str) -> float:
        for _ in range(3):
            await run_level(service, level, args.tokens)
        start = time.process_time()
        for _ in range(args.rounds):
            await run_level(service, level, args.tokens)
        return (time.process_time() - start) / (args.rounds * args.tokens) * 1e6

    async def all_levels() -> None:
        for level in LEVELS:
            best = min([await measure(level) for _ in range(3)])
            print(f"{level:9s} {best:7.1f} us CPU per token", flush=True)
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.rounds):
                await run_level(service, "response", args.tokens)
            profile.disable()
            profile.dump_stats(args.profile)

    asyncio.run(all_levels())


if __name__ == "__main__":
    main()
