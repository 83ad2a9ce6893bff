"""Constrained decoding with the real bundled model through the engine (LLMEngine, no HTTP):
every output validates, tool calls are forced and parsed the same way streamed or whole, and a
grammar changes nothing for its neighbours in the batch."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import jsonschema
import pytest

from chatforge.engine.errors import InvalidRequestError
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams
from chatforge.text.chat_template import ChatTemplate
from chatforge.text.detokenizer import IncrementalDetokenizer
from chatforge.text.structured import Choice, JsonSchema, StructuredOutput
from chatforge.text.tool_calls import ContentDelta, ToolCallArguments, ToolCallParser
from chatforge.text.tool_format import FunctionTool, ToolChoice, tool_call_grammar
from chatforge.text.tool_prompt import prepare_tool_prompt

pytestmark = pytest.mark.slow

CONTROL_IDS = set(range(17))

ACCOUNT = {  # $ref, anyOf with null, a format with a length bound, patterns, an integer range
    "$defs": {
        "contact": {
            "type": "object",
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": 30},
                "phone": {"anyOf": [{"type": "string", "pattern": "^\\+[0-9]{6,12}$"}, {"type": "null"}]},
            },
            "required": ["email", "phone"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "code": {"type": "string", "pattern": "^[0-9]{4}$"},
        "level": {"type": "integer", "minimum": 10, "maximum": 20},
        "contact": {"$ref": "#/$defs/contact"},
    },
    "required": ["name", "code", "level", "contact"],
    "additionalProperties": False,
}
ORDER = {  # enums, arrays with min/max items, nested objects, booleans
    "type": "object",
    "properties": {
        "status": {"enum": ["pending", "shipped", "delivered"]},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
        "gift": {"type": "boolean"},
        "note": {"anyOf": [{"type": "string", "maxLength": 30}, {"type": "null"}]},
    },
    "required": ["status", "items", "gift", "note"],
    "additionalProperties": False,
}
EVENT = {  # an array of enums, a bounded title, an integer range
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "tags": {"type": "array", "items": {"enum": ["work", "home", "travel"]}, "maxItems": 2},
        "attendees": {"type": "integer", "minimum": 0, "maximum": 500},
    },
    "required": ["title", "tags", "attendees"],
    "additionalProperties": False,
}
SMALL = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 12}, "n": {"type": "integer", "minimum": 0,
         "maximum": 9}}, "required": ["word", "n"], "additionalProperties": False}
SCHEMAS = {
    "account": (ACCOUNT, "Write the account record of Alice as JSON."),
    "order": (ORDER, "Write a JSON order for two books."),
    "event": (EVENT, "Describe tomorrow's team meeting as JSON."),
}

WEATHER = FunctionTool("get_weather", {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                       "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}, "Current weather in a city")
SEARCH = FunctionTool("search_web", {"type": "object", "properties": {"query": {"type": "string", "maxLength": 40}},
                      "required": ["query"]}, "Search the web")
EMAIL = FunctionTool("send_email", {"type": "object", "properties": {"to": {"type": "string", "format": "email", "maxLength": 30},
                     "subject": {"type": "string", "maxLength": 30}}, "required": ["to", "subject"]}, "Send an email")
TOOLS = [WEATHER, SEARCH, EMAIL]


@pytest.fixture(scope="module")
def tokenizer(bundled_gguf):
    from chatforge.models.source import resolve_model
    from chatforge.text.tokenizer import load_tokenizer

    return load_tokenizer(resolve_model(str(bundled_gguf)))


@pytest.fixture(scope="module")
def structured(tokenizer, smollm) -> StructuredOutput:
    return StructuredOutput(tokenizer, smollm.config.vocab_size)


@pytest.fixture(scope="module")
def template(tokenizer) -> ChatTemplate:
    return ChatTemplate.for_tokenizer(tokenizer)


@dataclass
class Completion:
    steps: list[list[int]] = field(default_factory=list)  # new token ids, step by step (as streamed)
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def token_ids(self) -> list[int]:
        return [t for step in self.steps for t in step]


def generate(engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[Completion]]:
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    out = {request_id: [Completion() for _ in range(params.n)] for request_id, (_, params) in requests.items()}
    while engine.has_unfinished():
        for step in engine.step():
            for c in step.outputs:
                done = out[step.request_id][c.index]
                done.steps.append(c.new_token_ids)
                done.finish_reason, done.error = c.finish_reason or done.finish_reason, c.error or done.error
    assert engine.stats().num_blocks_used == 0
    return out


def chat_prompt(tokenizer, template, question: str) -> list[int]:
    return tokenizer.encode(template.render([{"role": "user", "content": question}]))


def validate(document, schema) -> None:
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())


def test_every_output_validates_greedy_and_across_seeds(make_engine, tokenizer, template, structured):
    requests = {}
    for name, (schema, question) in SCHEMAS.items():
        grammar = structured.compile(JsonSchema(schema))
        prompt = chat_prompt(tokenizer, template, question)
        requests[f"{name}-greedy"] = (prompt, SamplingParams(temperature=0, max_tokens=200, grammar=grammar))
        for seed in range(1, 6):
            requests[f"{name}-seed{seed}"] = (prompt, SamplingParams(temperature=1.0, seed=seed, max_tokens=200, grammar=grammar))
    results = generate(make_engine(), requests)
    for request_id, (completion,) in results.items():
        assert completion.finish_reason is FinishReason.STOP, (request_id, completion.error)
        assert not set(completion.token_ids) & CONTROL_IDS, request_id
        document = json.loads(tokenizer.decode(completion.token_ids))
        validate(document, SCHEMAS[request_id.split("-")[0]][0])


def test_edge_parameters_still_end_with_valid_json(make_engine, tokenizer, template, structured):
    grammar = structured.compile(JsonSchema(SMALL))
    prompt = chat_prompt(tokenizer, template, "Give me a word and a digit as JSON.")
    forbidden_first = tokenizer.encode("Hello")[0]
    requests = {
        "ignore_eos": (prompt, SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, grammar=grammar)),
        "min_tokens": (prompt, SamplingParams(temperature=0, max_tokens=80, min_tokens=50, grammar=grammar)),
        "bias": (prompt, SamplingParams(temperature=0, max_tokens=60, logit_bias={forbidden_first: 100.0}, grammar=grammar)),
        "n3": (prompt, SamplingParams(temperature=1.0, seed=3, n=3, max_tokens=60, grammar=grammar)),
    }
    results = generate(make_engine(), requests)
    for request_id, completions in results.items():
        assert len(completions) == requests[request_id][1].n
        for completion in completions:
            assert completion.finish_reason is FinishReason.STOP, (request_id, completion.error)
            validate(json.loads(tokenizer.decode(completion.token_ids)), SMALL)
    assert len(results["min_tokens"][0].token_ids) < 50  # the finished grammar ended it early


def tool_request(tokenizer, template, structured, question, choice, parallel=True, **params):
    prompt = prepare_tool_prompt(template, [{"role": "user", "content": question}], TOOLS, choice)
    ids = tokenizer.encode(template.render(prompt.messages, tools=prompt.tools))
    grammar = tool_call_grammar(prompt.format, TOOLS, choice, parallel)
    return (ids, SamplingParams(grammar=structured.compile(grammar) if grammar else None, **params)), prompt.format


def counter_ids():
    count = itertools.count()
    return lambda: f"call_{next(count)}"


def merged(events):
    out = []
    for e in events:
        if out and type(e) is type(out[-1]) and isinstance(e, ContentDelta):
            out[-1] = ContentDelta(out[-1].text + e.text)
        elif out and isinstance(e, ToolCallArguments) and isinstance(out[-1], ToolCallArguments) and out[-1].index == e.index:
            out[-1] = ToolCallArguments(e.index, out[-1].text + e.text)
        else:
            out.append(e)
    return out


def parse_both_ways(tokenizer, fmt, completion: Completion) -> ToolCallParser:
    """Streamed (the detokenizer's deltas step by step) and whole; both must give the same events."""
    detokenizer, streamed = IncrementalDetokenizer(tokenizer), ToolCallParser(fmt, counter_ids())
    stream_events = [e for step in completion.steps for e in streamed.feed(detokenizer.push(step).delta)]
    stream_events += streamed.feed(detokenizer.flush()) + streamed.finish()
    whole = ToolCallParser(fmt, counter_ids())
    whole_events = whole.feed(tokenizer.decode(completion.token_ids)) + whole.finish()
    assert merged(stream_events) == merged(whole_events)
    assert (streamed.content, streamed.truncated) == (whole.content, whole.truncated)
    assert not any(isinstance(e, ContentDelta) and "<tool_call>" in e.text for e in stream_events)
    return whole


def test_tool_choices_are_forced_parsed_alike_streamed_or_whole_and_valid(make_engine, tokenizer, template, structured):
    greedy = {"temperature": 0, "max_tokens": 160}
    cases = {
        "required": ("What's the weather in Bern?", ToolChoice("required"), True, greedy),
        "named": ("What's the weather in Bern?", ToolChoice("function", "send_email"), True, greedy),
        "auto_hi": ("Hi!", ToolChoice("auto"), True, greedy),
        "cut": ("What's the weather in Bern?", ToolChoice("required"), True, {"temperature": 0, "max_tokens": 8}),
    }
    two_cities = "What's the weather in Bern and in Paris?"
    for seed in range(1, 7):  # the same draws, with and without parallel calls
        sampling = {"temperature": 1.0, "seed": seed, "max_tokens": 160}
        cases[f"parallel{seed}"] = (two_cities, ToolChoice("required"), True, sampling)
        cases[f"single{seed}"] = (two_cities, ToolChoice("required"), False, sampling)
    requests, formats = {}, {}
    for request_id, (question, choice, parallel, sampling) in cases.items():
        requests[request_id], formats[request_id] = tool_request(tokenizer, template, structured, question, choice, parallel,
                                                                 **sampling)
    results = generate(make_engine(), requests)
    parsed = {rid: parse_both_ways(tokenizer, formats[rid], c) for rid, (c,) in results.items()}
    schemas = {t.name: t.parameters for t in TOOLS}
    for request_id in cases.keys() - {"auto_hi", "cut"}:
        assert results[request_id][0].finish_reason is FinishReason.STOP, request_id
        calls = parsed[request_id].calls
        assert calls and parsed[request_id].content == "" and not parsed[request_id].truncated
        for call in calls:
            validate(json.loads(call.arguments), schemas[call.name])
    assert [c.name for c in parsed["named"].calls] == ["send_email"]
    assert all(len(parsed[f"single{seed}"].calls) == 1 for seed in range(1, 7))
    assert max(len(parsed[f"parallel{seed}"].calls) for seed in range(1, 7)) >= 2  # measured: 3 of 6 seeds
    assert parsed["auto_hi"].calls == [] and parsed["auto_hi"].content.strip()
    assert results["auto_hi"][0].finish_reason is FinishReason.STOP
    cut = results["cut"][0]
    assert cut.finish_reason is FinishReason.LENGTH and len(cut.token_ids) == 8
    assert parsed["cut"].truncated and parsed["cut"].content == ""


def test_a_seeded_constrained_request_is_the_same_alone_and_amid_traffic(
    make_engine, tokenizer, template, structured, prompts, greedy_together, greedy_params
):
    grammar = structured.compile(JsonSchema(SMALL))
    prompt = chat_prompt(tokenizer, template, "A word and a digit, as JSON.")
    seeded = SamplingParams(temperature=1.0, seed=11, max_tokens=40, grammar=grammar)
    alone = generate(make_engine(), {"c": (prompt, seeded)})["c"][0]
    traffic = {"c": (prompt, seeded)}
    traffic.update({f"free{i}": (prompts[i], greedy_params) for i in range(4)})
    traffic["other"] = (chat_prompt(tokenizer, template, "Another one."), SamplingParams(temperature=1.0, seed=2, max_tokens=40,
                                                                                          grammar=grammar))
    amid = generate(make_engine(), traffic)
    assert amid["c"][0].token_ids == alone.token_ids and alone.finish_reason is FinishReason.STOP
    for i in range(4):  # unconstrained neighbours: the same tokens as in a batch without any grammar
        assert amid[f"free{i}"][0].token_ids == greedy_together[str(i)]


def test_a_grammar_for_another_vocabulary_is_refused_at_admission(make_engine, tokenizer):
    small = StructuredOutput(tokenizer, tokenizer.vocab_size + 32, mask_threads=1).compile(JsonSchema(SMALL))
    engine = make_engine()
    with pytest.raises(InvalidRequestError):
        engine.add_request("r", [1, 2, 3], SamplingParams(grammar=small))
    assert not engine.has_unfinished()


def test_preempted_constrained_sequences_resume_their_grammar(make_engine, tokenizer, template, structured):
    grammar = structured.compile(JsonSchema(SMALL))
    requests = {
        f"q{i}": (chat_prompt(tokenizer, template, f"Word number {i} and a digit, as JSON."),
                  SamplingParams(temperature=0, max_tokens=40, grammar=grammar))
        for i in range(4)
    }
    roomy = generate(make_engine(), requests)
    tight_engine = make_engine(num_kv_blocks=14)  # four prompts of ~40 tokens and their answers do not fit at once
    tight = generate(tight_engine, requests)
    assert tight_engine.stats().preemptions > 0
    for request_id in requests:
        assert tight[request_id][0].token_ids == roomy[request_id][0].token_ids
        assert tight[request_id][0].finish_reason is FinishReason.STOP


def test_a_token_the_grammar_refuses_ends_only_its_sequence_with_a_grammar_error(make_engine, tokenizer, template, structured):
    only_z = structured.compile(Choice(("Z",)))
    z_tokens = {i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) == b"Z"}
    prompt = chat_prompt(tokenizer, template, "Say Z.")
    requests = {
        "impossible": (prompt, SamplingParams(temperature=0, max_tokens=5, logit_bias=dict.fromkeys(z_tokens, float("-inf")),
                                              grammar=only_z)),
        "fine": (prompt, SamplingParams(temperature=0, max_tokens=5, grammar=only_z)),
    }
    results = generate(make_engine(), requests)  # every block returns to the pool (checked in generate)
    impossible, fine = results["impossible"][0], results["fine"][0]
    assert impossible.finish_reason is FinishReason.GRAMMAR_ERROR and "doesn't satisfy the grammar" in impossible.error
    assert fine.finish_reason is FinishReason.STOP and tokenizer.decode(fine.token_ids) == "Z" and fine.error is None


def test_greedy_rows_skip_their_masks_and_give_the_tokens_of_masking_every_step(
    make_engine, tokenizer, template, structured, monkeypatch
):
    """The sampler masks a greedy row only when the grammar refuses its unmasked argmax
    (engine/grammar_mask.py). Forcing a mask at every step (a matcher that never says yes)
    must give the same tokens; and most rows must have skipped their masks."""
    from chatforge.text.structured import LLGuidanceMatcher

    requests = {
        name: (chat_prompt(tokenizer, template, question),
               SamplingParams(temperature=0, max_tokens=120, grammar=structured.compile(JsonSchema(schema))))
        for name, (schema, question) in SCHEMAS.items()
    }
    requests["tool"], _ = tool_request(tokenizer, template, structured, "What's the weather in Bern?", ToolChoice("auto"),
                                       temperature=0, max_tokens=80)
    engine = make_engine()
    masks, filled = engine.runner.sampler.grammar_masks, []
    fill = masks.fill
    monkeypatch.setattr(masks, "fill", lambda seqs, rows=None, at=None: filled.append(len(rows)) or fill(seqs, rows, at))
    skipping = generate(engine, requests)
    monkeypatch.setattr(LLGuidanceMatcher, "allows", lambda self, token_id: False)
    every_step = generate(make_engine(), requests)
    for request_id in requests:
        assert skipping[request_id][0].token_ids == every_step[request_id][0].token_ids, request_id
        assert skipping[request_id][0].finish_reason is every_step[request_id][0].finish_reason is FinishReason.STOP
    total_rows = sum(len(skipping[r][0].steps) for r in requests)
    assert sum(filled) < total_rows / 2, (sum(filled), total_rows)
