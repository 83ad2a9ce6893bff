"""The node protocol carries every sampling field and every part of an engine output exactly, and
refuses what it does not know instead of dropping it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput, TokenLogprob
from chatforge.engine.sampling_params import SamplingParams
from chatforge.upstream.protocol import (
    ProtocolError, decode_output, decode_sampling, encode_output, encode_sampling, engine_error, error_line,
)


def test_every_sampling_field_round_trips():
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, typical_p=0.8, repetition_penalty=1.1,
                            presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={17: -100.0, 3: 2.5}, seed=42,
                            max_tokens=12, min_tokens=2, stop=["\n\n"], stop_token_ids=[2, 7], ignore_eos=True,
                            logprobs=True, top_logprobs=3, n=2, prompt_logprobs=2)
    wire = json.loads(json.dumps(encode_sampling(params)))
    back, grammar = decode_sampling(wire)
    assert back == params and grammar is None
    assert set(wire) == {f.name for f in dataclasses.fields(SamplingParams)}


def test_an_unknown_field_is_refused_by_name():
    wire = encode_sampling(SamplingParams()) | {"mirostat": 2}
    with pytest.raises(ProtocolError, match="`mirostat`"):
        decode_sampling(wire)


def test_a_bad_value_is_refused_with_the_engine_reason():
    with pytest.raises(ProtocolError, match="top_p"):
        decode_sampling(encode_sampling(SamplingParams()) | {"top_p": 0})


def test_an_output_round_trips_with_logprobs_and_the_stop_id():
    out = RequestOutput("r1", 12, 8, [
        CompletionOutput(0, [5, 9], [TokenLogprob(5, -0.1, [(5, -0.1), (6, -2.0)]), TokenLogprob(9, -0.3, [])], 4),
        CompletionOutput(1, [], [], 3, FinishReason.STOP, stop_token_id=2),
    ], False, prompt_logprobs=[None, TokenLogprob(4, -1.5, [(4, -1.5)])])
    line = encode_output(out)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_output("r1", json.loads(line)) == out


@pytest.mark.parametrize("error, kind", [
    (engine_errors.PromptTooLongError("too long", prompt_tokens=900, max_prompt_tokens=512), engine_errors.PromptTooLongError),
    (engine_errors.EngineOverloadedError("full"), engine_errors.EngineOverloadedError),
    (engine_errors.InvalidRequestError("token 99999 is outside the vocabulary"), engine_errors.InvalidRequestError),
    (ProtocolError("prompt_ids must be a list of token ids"), engine_errors.InvalidRequestError),
    (engine_errors.EngineDeadError("stopped"), engine_errors.EngineDeadError),
    (engine_errors.StepFailedError("boom", request_ids=["r"]), engine_errors.StepFailedError),
])
def test_errors_cross_as_the_same_typed_errors(error, kind):
    rebuilt = engine_error(json.loads(error_line(error))["error"])
    assert type(rebuilt) is kind and str(rebuilt) == str(error)
    if kind is engine_errors.PromptTooLongError:
        assert (rebuilt.prompt_tokens, rebuilt.max_prompt_tokens) == (900, 512)


def test_an_unexpected_failure_tells_no_detail():
    body = json.loads(error_line(RuntimeError("secret internals")))["error"]
    assert body["type"] == "internal" and "secret" not in body["message"]
