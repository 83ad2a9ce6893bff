"""`chatforge chat`: a terminal conversation, against a server over HTTP or the bundled model
in-process. The conversation history is kept here and sent whole on every turn."""

from __future__ import annotations

import json
import uuid
from typing import Protocol, TextIO

import httpx

from chatforge.schema_option import response_format


class ChatBackend(Protocol):
    def stream(self, messages: list[dict], max_tokens: int, temperature: float): ...  # async iterator of str
    def close(self) -> None: ...


class HttpChat:
    def __init__(self, url: str, model: str | None, api_key: str | None, json_schema: dict | None = None):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.model = model
        self.json_schema = json_schema  # every answer is JSON valid for it
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(600, connect=10))

    async def _model(self) -> str:
        if self.model is None:
            r = await self.client.get(f"{self.url}/models")
            r.raise_for_status()
            self.model = r.json()["data"][0]["id"]
        return self.model

    async def stream(self, messages, max_tokens, temperature):
        body = {"model": await self._model(), "messages": messages, "stream": True,
                "max_tokens": max_tokens, "temperature": temperature}
        if self.json_schema is not None:
            body["response_format"] = response_format(self.json_schema)
        async with self.client.stream("POST", f"{self.url}/chat/completions", json=body) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode(errors="replace")
                raise RuntimeError(f"server answered {r.status_code}: {detail}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    text = choice.get("delta", {}).get("content")
                    if text:
                        yield text

    def close(self) -> None:
        pass


class LocalChat:
    """The bundled (or named) model run in this process, no server needed."""

    def __init__(self, model: str | None, json_schema: dict | None = None):
        from chatforge.service.chat import ChatService
        from chatforge.service.loading import load_catalog
        from chatforge.settings import load_settings

        self.catalog = load_catalog(load_settings(models=[model] if model else None))
        self.service = ChatService(self.catalog)
        self.json_schema = json_schema

    async def stream(self, messages, max_tokens, temperature):
        from chatforge.service.protocol import ChatMessage, ChatRequest, OutputFormat, SamplingParams
        from chatforge.text.structured import JsonSchema

        schema = self.json_schema
        req = ChatRequest(
            request_id=uuid.uuid4().hex,
            model=None,
            messages=[ChatMessage(m["role"], m["content"]) for m in messages],
            params=SamplingParams(temperature=temperature, max_tokens=max_tokens),
            output_format=OutputFormat(JsonSchema(schema), "--json-schema", "json_schema") if schema is not None else None,
        )
        async for event in self.service.stream(self.service.prepare(req)):
            for d in event.deltas:
                if d.text:
                    yield d.text

    def close(self) -> None:
        for m in self.catalog.models:
            m.engine.shutdown(0)


async def run_chat(backend, *, system: str | None, max_tokens: int, temperature: float, stdin: TextIO, stdout: TextIO) -> None:
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or not line.strip():
            stdout.write("\n")
            return
        messages.append({"role": "user", "content": line.rstrip("\n")})
        stdout.write("assistant> ")
        answer = ""
        async for piece in backend.stream(messages, max_tokens, temperature):
            answer += piece
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        messages.append({"role": "assistant", "content": answer})
