"""The chatforge node's wire format: token ids and sampling in, engine outputs out, as JSON.

`POST /internal/v1/generate` takes `{"model", "request_id", "prompt_ids", "sampling"}` and answers
200 with newline-delimited JSON, one line per engine output (`encode_output`), until the request
finishes. A blank line is a heartbeat (the node sends one when it has had nothing to say for a
while, so a gateway can tell a silent node from a dead one). An error, before or after the first
output, is a last line `{"error": {"type", "message", ...}}` (`error_line`); its type says whose
fault it is (see `ERROR_TYPES`).

Every field of `SamplingParams` travels under its own name, so a field the node does not know
(a gateway newer than its node) is refused by the node with an invalid_request error naming it,
never dropped. The compiled grammar travels as its source text and is compiled again on the node.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput, TokenLogprob
from chatforge.engine.sampling_params import SamplingParams

GENERATE_PATH = "/internal/v1/generate"
LOAD_PATH = "/internal/v1/load"
MEDIA_TYPE = "application/x-ndjson"

# Fields that need more than their JSON value.
_SPECIAL = {"grammar", "logit_bias"}


class ProtocolError(ValueError):
    """A message that does not follow this protocol (names the field)."""


# -- sampling ---------------------------------------------------------------------------------


def encode_sampling(params: SamplingParams) -> dict[str, Any]:
    body = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name not in _SPECIAL}
    # JSON object keys are strings: token ids go as [id, bias] pairs instead.
    body["logit_bias"] = [[int(t), float(b)] for t, b in params.logit_bias.items()]
    grammar = params.grammar
    body["grammar"] = None if grammar is None else grammar.source
    return body


def decode_sampling(body: Any) -> tuple[SamplingParams, str | None]:
    """(params without grammar, the grammar's source or None); ProtocolError naming a bad field."""
    if not isinstance(body, dict):
        raise ProtocolError("sampling must be an object")
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ProtocolError(f"this node does not know the sampling field `{unknown[0]}`")
    values = {k: v for k, v in body.items() if k not in _SPECIAL}
    try:
        values["logit_bias"] = {int(t): float(b) for t, b in body.get("logit_bias") or []}
    except (TypeError, ValueError):
        raise ProtocolError("logit_bias must be a list of [token id, bias] pairs") from None
    grammar = body.get("grammar")
    if grammar is not None and not isinstance(grammar, str):
        raise ProtocolError("grammar must be the grammar's source text")
    try:
        return SamplingParams(**values), grammar
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"sampling: {e}") from None


def generate_body(model: str, request_id: str, prompt_ids: list[int], params: SamplingParams) -> bytes:
    body = {"model": model, "request_id": request_id, "prompt_ids": prompt_ids, "sampling": encode_sampling(params)}
    return json.dumps(body, separators=(",", ":")).encode()


# -- outputs ----------------------------------------------------------------------------------


def _logprob(lp: TokenLogprob) -> list:
    return [lp.token_id, lp.logprob, [[t, p] for t, p in lp.top]]


def _from_logprob(row: list) -> TokenLogprob:
    token_id, logprob, top = row
    return TokenLogprob(token_id, logprob, [(t, p) for t, p in top])


def encode_output(out: RequestOutput) -> bytes:
    """One engine output as one line (with its newline)."""
    body: dict[str, Any] = {
        "num_prompt_tokens": out.num_prompt_tokens,
        "num_cached_tokens": out.num_cached_tokens,
        "finished": out.finished,
        "outputs": [_completion(c) for c in out.outputs],
    }
    if out.prompt_logprobs is not None:
        body["prompt_logprobs"] = [None if lp is None else _logprob(lp) for lp in out.prompt_logprobs]
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _completion(c: CompletionOutput) -> dict[str, Any]:
    body: dict[str, Any] = {"index": c.index, "token_ids": c.new_token_ids, "num_generated": c.num_generated}
    if c.new_logprobs is not None:
        body["logprobs"] = [_logprob(lp) for lp in c.new_logprobs]
    if c.finish_reason is not None:
        body["finish_reason"] = c.finish_reason.value
        body["stop_token_id"] = c.stop_token_id
        body["error"] = c.error
    return body


def decode_output(request_id: str, body: dict[str, Any]) -> RequestOutput:
    try:
        outputs = [
            CompletionOutput(
                index=c["index"],
                new_token_ids=c["token_ids"],
                new_logprobs=[_from_logprob(r) for r in c["logprobs"]] if "logprobs" in c else None,
                num_generated=c["num_generated"],
                finish_reason=FinishReason(c["finish_reason"]) if "finish_reason" in c else None,
                stop_token_id=c.get("stop_token_id"),
                error=c.get("error"),
            )
            for c in body["outputs"]
        ]
        prompt = body.get("prompt_logprobs")
        return RequestOutput(
            request_id=request_id,
            num_prompt_tokens=body["num_prompt_tokens"],
            num_cached_tokens=body["num_cached_tokens"],
            outputs=outputs,
            finished=body["finished"],
            prompt_logprobs=None if prompt is None else [None if r is None else _from_logprob(r) for r in prompt],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"a malformed output line ({type(e).__name__}: {e})") from None


# -- errors -----------------------------------------------------------------------------------

# type -> whose fault: "request" (refused for what it asks; never a node failure, never retried),
# "busy" (the node is full: another may take it), "node" (the node failed: retried elsewhere
# before the first output, and counted against the node).
ERROR_TYPES = {
    "invalid_request": "request",
    "prompt_too_long": "request",
    "overloaded": "busy",
    "engine_dead": "node",
    "step_failed": "node",
    "internal": "node",
}


def error_line(exc: BaseException) -> bytes:
    """The last line of a stream that failed with `exc` (an engine error, or a protocol error)."""
    body: dict[str, Any] = {"message": str(exc)}
    if isinstance(exc, engine_errors.PromptTooLongError):
        body.update(type="prompt_too_long", prompt_tokens=exc.prompt_tokens, max_prompt_tokens=exc.max_prompt_tokens)
    elif isinstance(exc, (engine_errors.InvalidRequestError, engine_errors.DuplicateRequestError, ProtocolError)):
        body.update(type="invalid_request")
    elif isinstance(exc, engine_errors.EngineOverloadedError):
        body.update(type="overloaded")
    elif isinstance(exc, engine_errors.EngineDeadError):
        body.update(type="engine_dead")
    elif isinstance(exc, engine_errors.StepFailedError):
        body.update(type="step_failed")
    else:
        body.update(type="internal", message="the node failed while serving this request")
    return json.dumps({"error": body}, separators=(",", ":")).encode() + b"\n"


def engine_error(body: Any) -> engine_errors.EngineError:
    """The engine error an error line stands for (the node's own typed error, rebuilt)."""
    if not isinstance(body, dict):
        body = {}
    kind, message = body.get("type"), str(body.get("message", "the node failed"))
    if kind == "prompt_too_long":
        return engine_errors.PromptTooLongError(message, prompt_tokens=int(body.get("prompt_tokens", 0)),
                                                max_prompt_tokens=int(body.get("max_prompt_tokens", 0)))
    if kind == "invalid_request":
        return engine_errors.InvalidRequestError(message)
    if kind == "overloaded":
        return engine_errors.EngineOverloadedError(message)
    if kind == "engine_dead":
        return engine_errors.EngineDeadError(message)
    return engine_errors.StepFailedError(message, request_ids=[])
