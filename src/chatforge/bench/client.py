"""One chat-completion request against an OpenAI-compatible server, and its timings.

Per request (all on `time.perf_counter`, in seconds):
- TTFT: from just before the request is sent to the first chunk that carries content;
- ITL: the gaps between successive content-carrying chunks (one per chunk, not per token:
  a server that packs several tokens into a chunk shows fewer, longer gaps);
- e2e: from sending to the end of the stream;
- TPOT: (e2e - TTFT) / (output tokens - 1), the decode time per token after the first.
Output tokens come from the usage chunk (`stream_options.include_usage`) when the server sends
one, else from the number of content chunks, which is exact for servers that send one token per
chunk and an undercount for those that merge them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from chatforge.bench.errors import BenchError
from chatforge.bench.sse import SSEParser
from chatforge.bench.workload import RequestSpec
from chatforge.schema_option import response_format

# Fields of a streamed delta whose text counts as output (reasoning models stream their thoughts
# under one of the last two before the answer).
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning")


@dataclass(frozen=True)
class Endpoint:
    """A server under test: its root URL (without /v1), model id, key and a short name for reports."""

    url: str
    model: str
    label: str
    api_key: str | None = None
    # Sent as response_format with every request (constrained decoding measured against the same
    # server unconstrained: the same URL twice, two labels, one with a schema).
    json_schema: dict | None = None

    @property
    def chat_url(self) -> str:
        return f"{self.url}/v1/chat/completions"


@dataclass(frozen=True)
class RequestOptions:
    stream: bool = True
    # Ask for exactly max_tokens: `ignore_eos` (vLLM, chatforge) and `min_tokens` (vLLM, chatforge,
    # llama-cpp-python's server) so every server under test produces the same output lengths.
    fixed_length: bool = True
    temperature: float = 0.0


@dataclass
class RequestResult:
    ok: bool
    start: float  # perf_counter when the request was sent
    e2e: float
    ttft: float | None = None  # None when no content arrived
    itls: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None  # as the server reported it, when it did
    usage_reported: bool = False
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def normalize_url(url: str) -> str:
    """A server's root URL: accepts `http://host:port`, with or without a trailing `/v1`."""
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise BenchError(f"not an http(s) URL: {url!r}")
    return url


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def first_model(client: httpx.AsyncClient, url: str, api_key: str | None) -> str:
    """The first model a server lists at /v1/models, for when the user named none."""
    try:
        r = await client.get(f"{url}/v1/models", headers=auth_headers(api_key))
    except httpx.HTTPError as e:
        raise BenchError(f"cannot reach {url}: {type(e).__name__}: {e}") from e
    if r.status_code != 200:
        raise BenchError(f"{url}/v1/models answered {r.status_code}: {r.text[:200]}")
    data = r.json().get("data") or []
    if not data:
        raise BenchError(f"{url} lists no models; name one with --model")
    return data[0]["id"]


def request_body(endpoint: Endpoint, spec: RequestSpec, options: RequestOptions) -> dict:
    body: dict = {
        "model": endpoint.model,
        "messages": list(spec.messages),
        "max_tokens": spec.max_tokens,
        "temperature": options.temperature,
        "stream": options.stream,
    }
    if options.stream:
        body["stream_options"] = {"include_usage": True}
    if options.fixed_length:
        body["ignore_eos"] = True
        body["min_tokens"] = spec.max_tokens
    if endpoint.json_schema is not None:  # a grammar that completes ends the answer, fixed length or not
        body["response_format"] = response_format(endpoint.json_schema)
    return body


async def open_response(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`client.send(request, stream=True)`, sent once more when the server closed the kept-alive
    connection it went out on before answering (the caller closes the response).

    NOTE: llama.cpp's server closes the connection after every streamed response although its
    headers say keep-alive; a request sent on it in the moment before the client sees the close
    finds it gone ("Server disconnected without sending a response"). Nothing of that request
    was read, so sending it again on a new connection is safe.
    """
    try:
        return await client.send(request, stream=True)
    except httpx.RemoteProtocolError:
        return await client.send(request, stream=True)


async def send(client: httpx.AsyncClient, endpoint: Endpoint, spec: RequestSpec, options: RequestOptions) -> RequestResult:
    """Sends one request and times it. Never raises for a failed request: the result says why."""
    body = request_body(endpoint, spec, options)
    request = client.build_request("POST", endpoint.chat_url, json=body, headers=auth_headers(endpoint.api_key))
    start = time.perf_counter()
    try:
        r = await open_response(client, request)
        try:
            if r.status_code != 200:
                detail = (await r.aread()).decode("utf-8", errors="replace")[:200]
                return RequestResult(False, start, time.perf_counter() - start, error=f"HTTP {r.status_code}: {detail}")
            if options.stream:
                return await _read_stream(r, start)
            payload = json.loads(await r.aread())
        finally:
            await r.aclose()
    except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return RequestResult(False, start, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
    e2e = time.perf_counter() - start
    result = RequestResult(True, start, e2e, ttft=e2e)
    if isinstance(payload, dict):
        _take_usage(result, payload.get("usage"))
    if not result.usage_reported:
        result.error = "the server reported no usage; output tokens unknown"
        result.ok = False
    return result


async def _read_stream(r: httpx.Response, start: float) -> RequestResult:
    parser = SSEParser()
    result = RequestResult(True, start, 0.0)
    chunks = 0
    last = None
    done = finished = False
    async for data in r.aiter_bytes():
        now = time.perf_counter()
        for event in parser.feed(data):
            if event.data == "[DONE]":
                done = True
                break
            chunk = json.loads(event.data)
            if not isinstance(chunk, dict) or event.event == "error" or "error" in chunk:
                result.ok = False
                result.error = f"stream error: {event.data[:200]}"
                done = True
                break
            _take_usage(result, chunk.get("usage"))
            choices = chunk.get("choices") or ()
            finished = finished or any(choice.get("finish_reason") for choice in choices)
            if any(_has_text(choice) for choice in choices):
                chunks += 1
                if last is None:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
        if done:
            break
    result.e2e = time.perf_counter() - start
    if not result.usage_reported:
        result.output_tokens = chunks
    if result.ok and not finished:
        # e.g. llama-cpp-python's server, by default, ends a stream with [DONE] and no finish
        # reason when another request arrives: its figures would look too good.
        result.ok = False
        result.error = "the stream ended without a finish_reason (cut short)"
    return result


def _has_text(choice: dict) -> bool:
    delta = choice.get("delta") or {}
    return any(delta.get(name) for name in _TEXT_FIELDS)


def _take_usage(result: RequestResult, usage: dict | None) -> None:
    # With `continuous_usage_stats` some servers put a running usage on every chunk: the last wins.
    if usage and usage.get("completion_tokens") is not None:
        result.output_tokens = int(usage["completion_tokens"])
        result.prompt_tokens = usage.get("prompt_tokens")
        result.usage_reported = True
