"""The node's side of the token-level protocol (protocol.py): a request's outputs as lines, from
the model's in-process engine, and the node's load for the gateways' balancers.

A node (`chatforge serve --engine-only`) runs its engines as an all-in-one server does; this adds
no state. Leaving the stream (the gateway went away, or closed it on a stop string) closes the
engine's generator, which aborts the request and frees its KV blocks at once.

A node drains as a gateway does (api/drain.py): while draining, its load says `draining` (503,
so every gateway's probes take it out) and a new generate is refused with 503 (the gateway
tries another node at once); the requests it holds run on, each registered with the drain,
which cuts them with finish reason `length` at the drain timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import suppress
from typing import Any

from chatforge.api.drain import Drain
from chatforge.engine.errors import EngineError
from chatforge.engine.outputs import FinishReason
from chatforge.service.catalog import ModelCatalog
from chatforge.service.errors import ModelNotFoundError
from chatforge.text.structured import CompiledSource, GrammarVocabularyError, StructuredOutputError
from chatforge.upstream.protocol import ProtocolError, decode_sampling, encode_output, error_line

HEARTBEAT = b"\n"

log = logging.getLogger("chatforge.node")


class NodeServing:
    def __init__(self, catalog: ModelCatalog, drain: Drain, heartbeat_s: float = 1.0):
        self.catalog = catalog
        self.drain = drain
        self.heartbeat_s = heartbeat_s

    def load(self, stalled: Collection[str] = ()) -> dict[str, Any]:
        """What the balancers read between requests: per model, whether its engine runs (and
        steps: `stalled` are the watchdog's), and its sequences running and waiting (a request
        with n completions counts n)."""
        models = {}
        for m in self.catalog.models:
            stats = m.engine.stats()
            models[m.model_id] = {"running": stats.running, "waiting": stats.waiting, "kv_usage": stats.kv_usage,
                                  "healthy": m.engine.is_running and m.model_id not in stalled,
                                  "context_length": m.context_length}
        status = "ok" if all(m["healthy"] for m in models.values()) else "unhealthy"
        if self.drain.draining:
            status = "draining"
        return {"status": status, "models": models, "in_flight": self.drain.in_flight}

    async def stream(self, raw: bytes) -> AsyncIterator[bytes]:
        """The lines answering one generate body; every failure is the last line."""
        try:
            model, request_id, prompt_ids, params, grammar = self._parse(raw)
            if grammar is not None:  # compiled again here, off the event loop (1-8 ms)
                params.grammar = await asyncio.to_thread(model.structured.compile, CompiledSource(grammar))
        except (ProtocolError, ModelNotFoundError, StructuredOutputError) as e:
            yield error_line(ProtocolError(str(e)))
            return
        except GrammarVocabularyError as e:  # this node cannot enforce any grammar: its failure, not the request's
            yield error_line(e)
            return
        outputs = model.engine.generate(request_id, prompt_ids, params)
        self.drain.enter(request_id, lambda: model.engine.finish(request_id, FinishReason.LENGTH))
        pending: asyncio.Future | None = None
        generated, outcome = 0, "aborted"  # unless it ends otherwise
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(outputs))
                done, _ = await asyncio.wait({pending}, timeout=self.heartbeat_s)
                if not done:
                    yield HEARTBEAT  # still queued or prefilling: say so
                    continue
                try:
                    out = pending.result()
                except StopAsyncIteration:
                    return
                except EngineError as e:
                    outcome = type(e).__name__
                    yield error_line(e)
                    return
                pending = None
                generated = max(generated, *(c.num_generated for c in out.outputs)) if out.outputs else generated
                yield encode_output(out)
                if out.finished:
                    outcome = "finished"
                    return
        except Exception as e:  # noqa: BLE001 - told to the gateway as the node's failure
            outcome = "failed"
            log.exception("node request %s failed", request_id)
            yield error_line(e)
        finally:
            self.drain.leave(request_id)
            log.info("node request %s model=%s prompt_tokens=%d generated=%d outcome=%s",
                     request_id, model.model_id, len(prompt_ids), generated, outcome)
            # The generator runs inside `pending`: cancelling it raises in the engine's stream,
            # whose `finally` aborts the request.
            if pending is not None and not pending.done():
                pending.cancel()
                with suppress(BaseException):
                    await pending
            await outputs.aclose()

    def _parse(self, raw: bytes):
        try:
            body = json.loads(raw)
        except ValueError:
            raise ProtocolError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError("the body must be an object")
        model = self.catalog.get(body.get("model"))
        request_id, prompt_ids = body.get("request_id"), body.get("prompt_ids")
        if not isinstance(request_id, str) or not request_id:
            raise ProtocolError("request_id must be a non-empty string")
        if not isinstance(prompt_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt_ids):
            raise ProtocolError("prompt_ids must be a list of token ids")
        params, grammar = decode_sampling(body.get("sampling"))
        return model, request_id, prompt_ids, params, grammar
