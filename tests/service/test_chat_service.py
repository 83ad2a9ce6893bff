"""ChatService's own decisions, each against a scripted engine with exact asserts: what prompt
the engine gets (truncation, dropped turns, raw prompts), how `max_tokens` is resolved, how
text is cut at stop strings across n completions and the engine freed early, what usage and
finish reasons come back, and how each engine error becomes the service's typed error."""

from __future__ import annotations

import pytest

from chatforge.engine import errors as engine_errors
from chatforge.engine.outputs import FinishReason, TokenLogprob
from chatforge.service.chat import ChatService
from chatforge.service.errors import (
    ContextLengthExceededError, EngineUnavailableError, GenerationFailedError, InvalidRequestError,
    ModelNotFoundError, OverloadedError,
)
from chatforge.service.protocol import ChatMessage, ChatRequest, ModelScope, SamplingParams, Usage

from .conftest import output, step

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def chat(*contents: str, **fields) -> ChatRequest:
    roles = ["user", "assistant"]
    messages = [ChatMessage(roles[i % 2], c) for i, c in enumerate(contents)]
    params = fields.pop("params", SamplingParams(max_tokens=8))
    return ChatRequest("r", fields.pop("model", "smollm2"), messages, params, **fields)


def text_answer(tokenizer, *texts: str, finish=FinishReason.STOP):
    """A script: completion i generates texts[i] one token per step, then ends with `finish`."""

    def script(prompt_ids, params):
        token_lists = [tokenizer.encode(t) for t in texts]
        outs = []
        for k in range(max(len(t) for t in token_lists)):
            steps = []
            for i, ids in enumerate(token_lists):
                if k < len(ids):
                    last = k == len(ids) - 1
                    steps.append(step(i, [ids[k]], k + 1, finish if last else None))
            outs.append(output("r", *steps, prompt_tokens=len(prompt_ids)))
        outs[-1].finished = True
        return outs

    return script


async def events_of(service, prep):
    return [e async for e in service.stream(prep)]


# -- the prompt the engine gets ------------------------------------------------------------------
async def test_truncate_keeps_the_last_prompt_tokens(make_catalog, tokenizer):
    catalog, engine = make_catalog(text_answer(tokenizer, "Hi"))
    service = ChatService(catalog)
    full = service.prepare(chat("Tell me about the sea.")).prompts[0].token_ids
    prep = service.prepare(chat("Tell me about the sea.", truncate_prompt_tokens=5))
    await service.complete(prep)
    assert engine.submitted[0].prompt_ids == list(full[-5:])
    assert prep.num_prompt_tokens == 5


async def test_the_oldest_turns_are_dropped_until_the_prompt_fits(make_catalog, tokenizer):
    system = ChatMessage("system", "Be brief.")
    turns = [ChatMessage("user", "one " * 10), ChatMessage("assistant", "two " * 10), ChatMessage("user", "three")]
    probe, _ = make_catalog(text_answer(tokenizer, "Hi"))
    last_turn_only = ChatService(probe).prepare(ChatRequest("r", None, [system, turns[-1]])).num_prompt_tokens
    # room for the system prompt, the last turn and 10 new tokens, not one turn more
    catalog, engine = make_catalog(text_answer(tokenizer, "Hi"), context_length=last_turn_only + 12)
    service = ChatService(catalog)
    req = ChatRequest("r", None, [system, *turns], SamplingParams(max_tokens=10), drop_oldest_turns=True)
    prep = service.prepare(req)
    kept = tokenizer.decode(prep.prompts[0].token_ids, skip_special_tokens=False)
    assert "Be brief." in kept and "three" in kept and "one" not in kept and "two" not in kept
    assert prep.num_prompt_tokens == last_turn_only
    # without permission to drop turns, the same request is a context error naming the numbers
    with pytest.raises(ContextLengthExceededError) as e:
        service.prepare(ChatRequest("r", None, [system, *turns], SamplingParams(max_tokens=10)))
    assert e.value.context_length == last_turn_only + 12 and e.value.param == "messages"
    assert e.value.prompt_tokens > last_turn_only + 20


async def test_raw_prompts_skip_the_chat_template(make_catalog, tokenizer):
    catalog, engine = make_catalog(text_answer(tokenizer, " blue", " red"))
    service = ChatService(catalog)
    req = ChatRequest("r", None, [], SamplingParams(max_tokens=4), prompts=["The sky is", [504, 3437]])
    prep = service.prepare(req)
    assert [p.token_ids for p in prep.prompts] == [tuple(tokenizer.encode("The sky is")), (504, 3437)]
    assert prep.prompts[1].text == tokenizer.decode([504, 3437], skip_special_tokens=False)
    with pytest.raises(InvalidRequestError) as e:
        service.prepare(ChatRequest("r", None, [], prompts=[[10**6]]))
    assert e.value.param == "prompt"


# -- max_tokens and the model ------------------------------------------------------------------
def test_max_tokens_none_is_the_rest_of_the_context(make_catalog, tokenizer):
    catalog, _ = make_catalog(text_answer(tokenizer, "Hi"), context_length=100)
    service = ChatService(catalog)
    prep = service.prepare(chat("Hi", params=SamplingParams(max_tokens=None, min_tokens=500)))
    assert prep.sampling.max_tokens == 100 - prep.num_prompt_tokens
    assert prep.sampling.min_tokens == prep.sampling.max_tokens  # clamped to what fits
    assert prep.max_total_tokens == 100


def test_the_scope_picks_and_limits_the_model(make_catalog, tokenizer):
    catalog, _ = make_catalog(text_answer(tokenizer, "Hi"))
    service = ChatService(catalog)
    scope = ModelScope("product 7", ("smollm2",), "smollm2")
    assert service.prepare(chat("Hi", model=None), scope).model_name == "smollm2"  # the scope's default, as named
    assert service.prepare(chat("Hi", model=MODEL), scope).model_name == MODEL  # an alias of an offered model
    assert service.prepare(chat("Hi", model=None)).model_name == MODEL  # the server's default
    with pytest.raises(ModelNotFoundError, match="not offered by product 7"):
        service.prepare(chat("Hi", model=MODEL), ModelScope("product 7", ("other-model",)))
    with pytest.raises(ModelNotFoundError, match="`gpt-5` does not exist"):
        service.prepare(chat("Hi", model="gpt-5"))


# -- stop strings across n, and freeing the engine early ---------------------------------------
async def test_stop_strings_cut_each_completion_and_free_the_engine(make_catalog, tokenizer):
    # completion 0 stops at "." early, completion 1 later; the engine would go on for both
    catalog, engine = make_catalog(text_answer(tokenizer, "Hi there. And more text", "A longer one. Yes more", finish=None))
    service = ChatService(catalog)
    prep = service.prepare(chat("Hi", params=SamplingParams(max_tokens=50, n=2, stop=["."])))
    events = await events_of(service, prep)
    result = await service.complete(service.prepare(chat("Hi", params=SamplingParams(max_tokens=50, n=2, stop=["."]))))
    assert [c.text for c in result.choices] == ["Hi there", "A longer one"]
    assert [c.finish_reason for c in result.choices] == [FinishReason.STOP_SEQUENCE] * 2
    assert engine.finished == [("r", FinishReason.STOP_SEQUENCE)] * 2  # once per request, when both had stopped
    assert engine.closed_early == ["r", "r"]
    assert events[-1].done and not any(e.done for e in events[:-1])
    # no text after a completion's stop string, and the stop string never sent
    sent = {0: "", 1: ""}
    for e in events:
        for d in e.deltas:
            sent[d.index] += d.text
    assert sent == {0: "Hi there", 1: "A longer one"}


async def test_a_completion_that_ends_keeps_its_reason_while_the_other_runs_on(make_catalog, tokenizer):
    catalog, engine = make_catalog(text_answer(tokenizer, "Short", "A much longer answer here", finish=FinishReason.LENGTH))
    service = ChatService(catalog)
    result = await service.complete(service.prepare(chat("Hi", params=SamplingParams(max_tokens=50, n=2))))
    assert [c.text for c in result.choices] == ["Short", "A much longer answer here"]
    assert [c.finish_reason for c in result.choices] == [FinishReason.LENGTH, FinishReason.LENGTH]
    assert engine.finished == [] and engine.closed_early == []  # the engine finished it itself
    generated = len(tokenizer.encode("Short")) + len(tokenizer.encode("A much longer answer here"))
    assert result.usage.completion_tokens == generated


# -- usage --------------------------------------------------------------------------------------
async def test_every_event_carries_the_running_usage_priced_once(make_catalog, tokenizer):
    catalog, _ = make_catalog(text_answer(tokenizer, "one two three"))
    service = ChatService(catalog)
    prep = service.prepare(chat("Hi"))
    events = await events_of(service, prep)
    p = prep.num_prompt_tokens
    assert [e.usage for e in events] == [Usage(p, k, (p * 0.5 + k * 1.5) / 1e6) for k in (1, 2, 3)]


async def test_a_batch_of_prompts_indexes_choices_per_prompt_and_n(make_catalog, tokenizer):
    catalog, engine = make_catalog(text_answer(tokenizer, "x", "y"))
    service = ChatService(catalog)
    req = ChatRequest("r", None, [], SamplingParams(max_tokens=4, n=2), prompts=["a", "b c"])
    result = await service.complete(service.prepare(req))
    assert [s.request_id for s in engine.submitted] == ["r.0", "r.1"]
    assert [(c.index, c.text) for c in result.choices] == [(0, "x"), (1, "y"), (2, "x"), (3, "y")]
    assert result.usage.prompt_tokens == len(tokenizer.encode("a")) + len(tokenizer.encode("b c"))
    assert result.usage.completion_tokens == 4


async def test_score_only_drops_the_sampled_token_and_passes_the_prompt_logprobs(make_catalog, tokenizer):
    ids = tokenizer.encode("Paris is nice")
    prompt_lps = [None] + [TokenLogprob(t, -1.0 - i, [(t, -1.0 - i)]) for i, t in enumerate(ids[1:])]

    def script(prompt_ids, params):
        assert params.max_tokens == 1  # one token is sampled, then dropped
        return [output("r", step(0, [7], 1, FinishReason.LENGTH, [TokenLogprob(7, -0.5)]), finished=True,
                       prompt_logprobs=prompt_lps)]

    catalog, _ = make_catalog(script)
    service = ChatService(catalog)
    req = ChatRequest("r", None, [], SamplingParams(max_tokens=None, logprobs=True, prompt_logprobs=1),
                      prompts=["Paris is nice"], score_only=True)
    result = await service.complete(service.prepare(req))
    (choice,) = result.choices
    assert (choice.text, choice.finish_reason, choice.logprobs) == ("", FinishReason.LENGTH, [])
    assert (choice.prompt_logprobs[0].sampled.token_id, choice.prompt_logprobs[0].sampled.logprob) == (ids[0], None)
    assert [lp.sampled.token_id for lp in choice.prompt_logprobs[1:]] == ids[1:]
    assert [lp.sampled.logprob for lp in choice.prompt_logprobs[1:]] == [-1.0 - i for i in range(len(ids) - 1)]
    assert result.usage.completion_tokens == 0


# -- engine errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raised, expected, status",
    [
        (engine_errors.EngineOverloadedError("full"), OverloadedError, 503),
        (engine_errors.PromptTooLongError("long", prompt_tokens=90, max_prompt_tokens=80), ContextLengthExceededError, 400),
        (engine_errors.InvalidRequestError("n too large"), InvalidRequestError, 400),
        (engine_errors.StepFailedError("boom", request_ids=["r"]), GenerationFailedError, 500),
        (engine_errors.EngineDeadError("stopped"), EngineUnavailableError, 503),
    ],
)
async def test_engine_errors_become_the_services_typed_errors(make_catalog, raised, expected, status):
    catalog, _ = make_catalog(lambda ids, params: raised)
    service = ChatService(catalog)
    with pytest.raises(expected) as e:
        await service.complete(service.prepare(chat("Hi")))
    assert type(e.value) is expected and e.value.status == status and isinstance(e.value.__cause__, type(raised))
    if expected is OverloadedError:
        assert e.value.headers == {"Retry-After": "1"}
    if expected is ContextLengthExceededError:
        assert (e.value.prompt_tokens, e.value.context_length) == (90, 81)
