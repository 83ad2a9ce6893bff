"""A fake engine node that sleeps per token instead of computing: the chatforge node protocol
(`/internal/v1/generate`, `/internal/v1/load`), vLLM's `/v1/completions` (prompt as token ids,
`return_token_ids`, `stream: true`), a minimal OpenAI `/v1/chat/completions`, and `/health`.

It isolates the gateway: N fake nodes in one process really are N times the capacity of one, even
on 2 cores, since sleeping costs nothing. Each serves at most `slots` requests at once (the rest
queue, and count as waiting in its load), emits `answer_ids` in a cycle, and finishes with
`length` at max_tokens (or with `stop`, on `stop_id`, once the answer is out, if one is given).

Run alone: `python tests/upstream/fake_node.py --ports 9001 9002 --token-delay 0.02 --slots 8`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_ANSWER = [504, 3458, 314, 260, 3458, 30]  # a handful of ordinary SmolLM2 ids


@dataclass
class FakeNode:
    model: str = "fake-model"
    token_delay: float = 0.0
    first_delay: float = 0.0
    slots: int = 8
    answer_ids: list[int] = field(default_factory=lambda: list(DEFAULT_ANSWER))
    stop_id: int | None = None  # ended with `stop` on this id after the answer, when given
    cut_after: int | None = None  # drop the connection after this many tokens (a node dying mid-stream)
    error: dict | None = None  # answer every generate with this error line (protocol.py's shape)
    refuse: tuple[int, str] | None = None  # answer every /v1/completions with this status and message
    served: int = 0  # requests started
    bodies: list[dict] = field(default_factory=list)  # the /v1/completions bodies, newest last

    def __post_init__(self):
        self._slots = asyncio.Semaphore(self.slots)
        self.running = 0
        self.waiting = 0

    def tokens(self, max_tokens: int):
        """(token id, finish reason or None) for each generated token."""
        for i in range(max_tokens):
            if self.stop_id is not None and i == len(self.answer_ids):
                yield self.stop_id, "stop"
                return
            yield self.answer_ids[i % len(self.answer_ids)], ("length" if i == max_tokens - 1 else None)

    async def run(self, max_tokens: int):
        """Paced tokens while holding a slot."""
        self.waiting += 1
        async with self._slots:
            self.waiting -= 1
            self.running += 1
            self.served += 1
            try:
                await asyncio.sleep(self.first_delay)
                for i, item in enumerate(self.tokens(max_tokens)):
                    if i and self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    yield item
            finally:
                self.running -= 1

    # -- the chatforge node protocol --------------------------------------------------------

    async def generate(self, request: Request):
        body = json.loads(await request.body())
        sampling = body["sampling"]
        prompt = len(body["prompt_ids"])
        if self.error is not None:
            return Response(json.dumps({"error": self.error}).encode() + b"\n", media_type="application/x-ndjson")

        async def lines():
            n = 0
            async for token, reason in self.run(sampling["max_tokens"]):
                if n == self.cut_after:
                    raise ConnectionAbortedError("the fake node dies mid-stream")
                n += 1
                stop = token if reason == "stop" else None
                out = {"index": 0, "token_ids": [] if stop is not None else [token], "num_generated": n}
                if reason:
                    out.update(finish_reason=reason, stop_token_id=stop, error=None)
                yield json.dumps({"num_prompt_tokens": prompt, "num_cached_tokens": 0, "finished": reason is not None,
                                  "outputs": [out]}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def load(self, request: Request):
        return JSONResponse({"status": "ok", "served": self.served, "models": {self.model: {
            "running": self.running, "waiting": self.waiting, "kv_usage": 0.0, "healthy": True, "context_length": 8192}}})

    # -- OpenAI-compatible ------------------------------------------------------------------

    async def completions(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        if self.refuse is not None:
            return JSONResponse({"error": {"message": self.refuse[1]}}, status_code=self.refuse[0])
        if not isinstance(body.get("prompt"), list):
            return JSONResponse({"error": {"message": "prompt must be token ids"}}, status_code=400)
        prompt, created = len(body["prompt"]), int(time.time())

        async def events():
            async for token, reason in self.run(body.get("max_tokens") or 16):
                choice = {"index": 0, "text": f"<{token}>", "token_ids": [token], "logprobs": None, "finish_reason": reason}
                yield _sse({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": self.model,
                            "choices": [choice]})
            usage = {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt,
                     "prompt_tokens_details": {"cached_tokens": 0}}
            yield _sse({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": self.model,
                        "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat(self, request: Request):
        """The same tokens as words, not streamed: a client's baseline without any gateway."""
        body = await request.json()
        words = [f"w{token}" async for token, _ in self.run(body.get("max_tokens") or 16)]
        return JSONResponse({"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                             "model": self.model, "choices": [{"index": 0, "finish_reason": "length",
                                                               "message": {"role": "assistant", "content": " ".join(words)}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": len(words) + 1}})

    def app(self) -> Starlette:
        async def health(request: Request):
            return Response(b"{}", media_type="application/json")

        return Starlette(routes=[
            Route("/internal/v1/generate", self.generate, methods=["POST"]),
            Route("/internal/v1/load", self.load),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/health", health),
        ])


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def serve(nodes: list[FakeNode], ports: list[int]) -> None:
    import uvicorn

    servers = [uvicorn.Server(uvicorn.Config(n.app(), host="127.0.0.1", port=p, log_level="warning", access_log=False,
                                             lifespan="off"))
               for n, p in zip(nodes, ports)]
    await asyncio.gather(*(s.serve() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, nargs="+", required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    nodes = [FakeNode(args.model, args.token_delay, slots=args.slots) for _ in args.ports]
    asyncio.run(serve(nodes, args.ports))


if __name__ == "__main__":
    main()
