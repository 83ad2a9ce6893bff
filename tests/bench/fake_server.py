"""A scripted OpenAI-compatible chat server: it streams `max_tokens` one-word chunks, the first
after `first_delay` seconds and the rest `gap` seconds apart, so a benchmark's figures have known
lower bounds. It keeps every request body and the (start, end) time of every request."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

MODEL = "fake-model"


@dataclass(frozen=True)
class FakeBehaviour:
    first_delay: float = 0.05
    gap: float = 0.01
    usage: bool = True  # honour stream_options.include_usage
    status: int = 200  # anything else: every chat request fails with it
    cut_after: int | None = None  # end streams with [DONE] after this many tokens, no finish_reason
    error_after: int | None = None  # send an `event: error` after this many tokens


def fake_openai_app(b: FakeBehaviour) -> Starlette:
    state = {"in_flight": 0}

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: Request):
        body = await request.json()
        app.state.bodies.append(body)
        if b.status != 200:
            return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}}, status_code=b.status)
        n = body["max_tokens"]
        usage = {"prompt_tokens": len(body["messages"][-1]["content"].split()), "completion_tokens": n,
                 "total_tokens": 0}
        if not body.get("stream"):
            start = time.perf_counter()
            await asyncio.sleep(b.first_delay + b.gap * (n - 1))
            app.state.intervals.append((start, time.perf_counter()))
            return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": " w" * n},
                                              "finish_reason": "length"}], "usage": usage})
        return StreamingResponse(_stream(body, n, usage), media_type="text/event-stream")

    async def _stream(body: dict, n: int, usage: dict):
        start = time.perf_counter()
        state["in_flight"] += 1
        app.state.max_in_flight = max(app.state.max_in_flight, state["in_flight"])
        try:
            yield _chunk({"role": "assistant", "content": ""})
            await asyncio.sleep(b.first_delay)
            for i in range(n):
                if i:
                    await asyncio.sleep(b.gap)
                if i == b.cut_after:
                    yield b"data: [DONE]\n\n"
                    return
                if i == b.error_after:
                    yield b'event: error\ndata: {"error": {"message": "engine overloaded"}}\n\n'
                    return
                yield _chunk({"content": f" w{i}"})
            yield _chunk({}, finish="length")
            if b.usage and (body.get("stream_options") or {}).get("include_usage"):
                yield b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            state["in_flight"] -= 1
            app.state.intervals.append((start, time.perf_counter()))

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.bodies = []
    app.state.intervals = []
    app.state.max_in_flight = 0
    return app


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    payload = {"object": "chat.completion.chunk", "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
