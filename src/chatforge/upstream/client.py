"""One client per kind of upstream, each turning a request (prompt ids + sampling) into the engine's
own `RequestOutput`s, so the remote engine above treats every kind alike.

- `ChatforgeNodeClient`: a chatforge node's token-level stream (protocol.py), over a lean
  HTTP/1.1 client (http11.py). Exact: every sampling field, logprobs, cached tokens, the stop id.
- `OpenAICompletionsClient`: `/v1/completions` of vLLM, llama.cpp's server, a router, or any
  OpenAI-compatible engine, with the prompt as token ids and `stream: true`. The generated ids
  come back as vLLM's `token_ids` (`return_token_ids`), or as the ids in llama.cpp's logprobs;
  an answer with neither is the upstream's failure (the gateway needs ids, not text).

Failures are sorted by whose fault they are (errors.py). Both clients also `probe()` their
upstream without generating anything.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import httpx

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput, TokenLogprob
from chatforge.engine.sampling_params import SamplingParams
from chatforge.settings import FleetConfig, UpstreamEntry
from chatforge.upstream.errors import NodeFailure
from chatforge.upstream.http11 import Http11Pool, NodeConnectionError
from chatforge.upstream.protocol import (
    ERROR_TYPES, GENERATE_PATH, LOAD_PATH, ProtocolError, decode_output, engine_error, generate_body,
)


@dataclass(frozen=True)
class Probe:
    healthy: bool
    waiting: int = 0  # sequences queued on the node (chatforge nodes report it; 0 when unknown)
    detail: str = ""  # why it is unhealthy


def make_http(config: FleetConfig) -> httpx.AsyncClient:
    """One connection pool per upstream: kept-alive connections, no pool wait."""
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=512, keepalive_expiry=30)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(config.health_timeout_s), trust_env=False)


class _Client:
    def __init__(self, entry: UpstreamEntry, model: str, config: FleetConfig):
        self.entry = entry
        self.url = entry.url.rstrip("/")
        self.kind = entry.kind
        self.model = entry.model or model
        self.config = config
        self.http = make_http(config)
        self.headers = {"authorization": f"Bearer {config.node_token}"} if config.node_token and entry.kind == "chatforge" else {}

    async def close(self) -> None:
        await self.http.aclose()

    async def probe(self) -> Probe:
        path = self.entry.health_path or self.default_health_path
        try:
            response = await self.http.get(self.url + path, headers=self.headers, timeout=self.config.health_timeout_s)
        except httpx.HTTPError as e:
            return Probe(False, detail=type(e).__name__)
        if response.status_code != 200:
            return Probe(False, detail=f"HTTP {response.status_code} {_status(response)}".rstrip())
        return self._read_probe(response)

    default_health_path = "/health"

    def _read_probe(self, response: httpx.Response) -> Probe:
        return Probe(True)

    def _timeout(self, read: float | None) -> httpx.Timeout:
        return httpx.Timeout(connect=self.config.connect_timeout_s, read=read, write=self.config.connect_timeout_s, pool=None)

    def _failure(self, status: int, body: bytes) -> Exception:
        """The error for a refused call: the request's fault for 400/413/422, a busy node for 429,
        otherwise (5xx, or 401/403/404: a gateway or upstream misconfigured) the node's; 503 (a
        node draining, an engine gone) takes it out at once, until a probe finds it well."""
        message = _message(body) or f"HTTP {status}"
        if status in (400, 413, 422):
            return engine_errors.InvalidRequestError(f"the upstream refused the request: {message}")
        if status == 429:
            return engine_errors.EngineOverloadedError(message)
        return NodeFailure(f"{self.url} answered HTTP {status}: {message}", unreachable=status == 503)


class ChatforgeNodeClient(_Client):
    default_health_path = LOAD_PATH

    def __init__(self, entry: UpstreamEntry, model: str, config: FleetConfig):
        super().__init__(entry, model, config)
        self.pool = Http11Pool(self.url, connect_timeout_s=config.connect_timeout_s)  # the request path (http11.py)

    async def close(self) -> None:
        await self.pool.close()
        await super().close()

    def _read_probe(self, response: httpx.Response) -> Probe:
        try:
            model = response.json()["models"][self.model]
        except (ValueError, KeyError, TypeError):
            return Probe(False, detail=f"the node does not serve {self.model}")
        if not model.get("healthy", False):
            return Probe(False, detail="its engine is not running")
        return Probe(True, waiting=int(model.get("waiting", 0)))

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        body = generate_body(self.model, request_id, prompt_ids, params)
        headers = {**self.headers, "content-type": "application/json"}
        try:
            response = await self.pool.post(GENERATE_PATH, body, headers, self.config.silence_timeout_s)
            try:
                if response.status != 200:
                    raise self._failure(response.status, await response.read())
                async for line in response.lines():
                    if not line:
                        continue  # a heartbeat
                    message = json.loads(line)
                    if "error" in message:
                        raise _node_error(message["error"])
                    yield decode_output(request_id, message)
            finally:
                response.release()  # kept alive if read to the end; else closed (the node aborts)
        except engine_errors.EngineError:
            raise  # the request's own fault, or a full node: as the node said (some are ValueErrors)
        except TimeoutError as e:
            raise NodeFailure(f"{self.url} was silent for too long", unreachable=True) from e
        except NodeConnectionError as e:
            raise NodeFailure(f"{self.url} went away ({e})", unreachable=True) from e
        except (ValueError, ProtocolError) as e:
            raise NodeFailure(f"{self.url} sent a malformed line: {e}") from e


def _status(response: httpx.Response) -> str:
    """The `status` a health answer gives (a chatforge server's: unhealthy, draining), or ''."""
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        return ""
    return status if isinstance(status, str) else ""


def _node_error(body: Any) -> Exception:
    error = engine_error(body)
    if ERROR_TYPES.get(body.get("type") if isinstance(body, dict) else None) == "node":
        failure = NodeFailure(f"the node failed: {error}")
        failure.__cause__ = error
        return failure
    return error


class OpenAICompletionsClient(_Client):
    """`stop_ids`: the ids that end a completion (the tokenizer's end of turn, the request's
    stop_token_ids): an upstream that returns the one it stopped on has it taken off the text,
    as the engine does."""

    def __init__(self, entry: UpstreamEntry, model: str, config: FleetConfig, stop_ids: Collection[int] = ()):
        super().__init__(entry, model, config)
        self.stop_ids = frozenset(stop_ids)

    def body(self, prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt_ids, "max_tokens": params.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": params.temperature, "top_p": params.top_p,
            "n": params.n, "presence_penalty": params.presence_penalty, "frequency_penalty": params.frequency_penalty,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in params.logit_bias.items()}
        if self.kind == "llamacpp":  # ids come back in its logprobs only
            body.update(logprobs=max(1, params.top_logprobs), top_k=params.top_k, min_p=params.min_p,
                        typical_p=params.typical_p, repeat_penalty=params.repetition_penalty, ignore_eos=params.ignore_eos)
            del body["n"]
            return body
        body["return_token_ids"] = True
        if params.logprobs:
            body.update(logprobs=params.top_logprobs, return_tokens_as_token_ids=True)
        if self.kind == "vllm":
            body.update(top_k=params.top_k if params.top_k > 0 else -1, min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                        min_tokens=params.min_tokens, stop_token_ids=params.stop_token_ids, ignore_eos=params.ignore_eos)
        return body

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        state = _Completions(request_id, len(prompt_ids), params, self.stop_ids | set(params.stop_token_ids))
        try:
            async with self.http.stream("POST", self.url + "/v1/completions", json=self.body(prompt_ids, params),
                                        timeout=self._timeout(None)) as response:
                if response.status_code != 200:
                    raise self._failure(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise NodeFailure(f"{self.url} failed mid-stream: {_message(json.dumps(chunk).encode())}")
                    out = state.read(chunk)
                    if out is not None:
                        yield out
        except engine_errors.EngineError:
            raise  # the request's own fault, or a full upstream (some are ValueErrors)
        except httpx.TimeoutException as e:
            raise NodeFailure(f"{self.url} timed out ({type(e).__name__})", unreachable=True) from e
        except httpx.TransportError as e:
            raise NodeFailure(f"{self.url} went away ({type(e).__name__})", unreachable=True) from e
        except (ValueError, KeyError, TypeError) as e:
            raise NodeFailure(f"{self.url} sent an answer chatforge cannot read: {e}") from e
        if not state.finished:
            raise NodeFailure(f"{self.url} ended the stream before every completion finished")
        yield state.final()


class _Completions:
    """The state of one request's completions while an OpenAI-format stream comes in. The output
    that finishes the request is held until the stream ends, so the usage chunk that follows it
    (cached tokens) is in it."""

    def __init__(self, request_id: str, num_prompt: int, params: SamplingParams, stop_ids: frozenset[int]):
        self.request_id = request_id
        self.num_prompt = num_prompt
        self.params = params
        self.stop_ids = stop_ids
        self.generated = [0] * params.n
        self.reasons: list[FinishReason | None] = [None] * params.n
        self.cached = 0
        self.held: list[CompletionOutput] = []

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.reasons)

    def read(self, chunk: dict[str, Any]) -> RequestOutput | None:
        usage = chunk.get("usage") or {}
        self.cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or self.cached)
        outputs = [c for c in map(self._choice, chunk.get("choices") or []) if c is not None]
        if self.finished:
            self.held.extend(outputs)
            return None
        return RequestOutput(self.request_id, self.num_prompt, self.cached, outputs, False) if outputs else None

    def final(self) -> RequestOutput:
        return RequestOutput(self.request_id, self.num_prompt, self.cached, self.held, True)

    def _choice(self, choice: dict[str, Any]) -> CompletionOutput | None:
        index = int(choice.get("index", 0))
        ids, logprobs = _ids_and_logprobs(choice, self.params)
        reason = _finish_reason(choice.get("finish_reason"))
        if ids is None:
            if choice.get("text"):
                raise ValueError("the upstream returned text without token ids (vLLM needs return_token_ids; "
                                 "choose the kind that matches the engine)")
            ids = []
        self.generated[index] += len(ids)
        stop_id = None
        if reason is FinishReason.STOP and ids and ids[-1] in self.stop_ids:
            stop_id = ids.pop()  # the id that ended it is not part of the text
            if logprobs:
                logprobs.pop()
        if not ids and reason is None:
            return None
        self.reasons[index] = reason or self.reasons[index]
        wanted = (logprobs or []) if self.params.logprobs else None
        return CompletionOutput(index, ids, wanted, self.generated[index], reason, stop_id)


def _ids_and_logprobs(choice: dict[str, Any], params: SamplingParams) -> tuple[list[int] | None, list[TokenLogprob] | None]:
    ids = choice.get("token_ids")
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):  # llama.cpp: one entry per token, with its id
        entries = lp["content"]
        found = [TokenLogprob(int(e["id"]), float(e["logprob"]),
                              [(int(t["id"]), float(t["logprob"])) for t in (e.get("top_logprobs") or [])][: params.top_logprobs])
                 for e in entries]
        return [e.token_id for e in found], found
    if isinstance(lp, dict) and isinstance(lp.get("tokens"), list):  # OpenAI's legacy shape, ids as "token_id:N"
        tokens = [_token_id(t) for t in lp["tokens"]]
        tops = lp.get("top_logprobs") or [{}] * len(tokens)
        found = [TokenLogprob(t, float(p), sorted(((_token_id(k), float(v)) for k, v in (top or {}).items()), key=lambda x: -x[1]))
                 for t, p, top in zip(tokens, lp.get("token_logprobs") or [], tops)]
        return (list(ids) if ids is not None else tokens), found
    return (list(ids) if ids is not None else None), None


def _token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise ValueError("logprobs name tokens by text, not id (vLLM needs return_tokens_as_token_ids)")
    return int(token[len("token_id:"):])


def _finish_reason(value: Any) -> FinishReason | None:
    if value is None:
        return None
    if value == "length":
        return FinishReason.LENGTH
    if value in ("abort", "cancelled"):
        return FinishReason.ABORT
    return FinishReason.STOP  # "stop", "eos", "stop_token": we send no stop strings


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", errors="replace").strip()
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:300]


def build_client(entry: UpstreamEntry, model: str, config: FleetConfig, stop_ids: Collection[int]) -> ChatforgeNodeClient | OpenAICompletionsClient:
    if entry.kind == "chatforge":
        return ChatforgeNodeClient(entry, model, config)
    return OpenAICompletionsClient(entry, model, config, stop_ids)
