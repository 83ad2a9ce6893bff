"""Constraint compilation (text/structured.py) on the bundled model's real vocabulary: what
compiles, what is refused and how, the limits against hostile input, and what the masks allow."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from chatforge.text.tool_format import SMOLLM2, FunctionTool, ToolChoice, tool_call_grammar
from chatforge.text.structured import (
    JSON_WHITESPACE_MAX,
    Choice,
    GrammarVocabularyError,
    JsonObject,
    JsonSchema,
    LarkGrammar,
    Regex,
    StructuredLimits,
    StructuredOutput,
    StructuredOutputError,
)

CONTROL_IDS = set(range(17))  # SmolLM2's control tokens; 0 and 2 end a turn
EOS_IDS = {0, 2}


@pytest.fixture(scope="module")
def structured(smol) -> StructuredOutput:
    return StructuredOutput(smol, mask_threads=1)


def allowed(matcher, vocab_size: int) -> set[int]:
    bitmask = np.zeros((1, (vocab_size + 31) // 32), dtype=np.int32)
    matcher.mask_filler.fill([(matcher, 0)], bitmask)
    bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab_size]
    return set(np.flatnonzero(bits).tolist())


def feed(smol, matcher, text: str) -> bool:
    return all(matcher.accept(t) for t in smol.encode(text))


def test_llguidance_sees_exactly_the_models_vocabulary(smol, structured):
    ll = structured.ll_tokenizer
    assert ll.vocab_size == smol.vocab_size == 49152
    assert sorted(ll.eos_tokens) == sorted(smol.end_of_turn_ids) == [0, 2]
    table = smol.token_bytes_table()  # byte-level BPE: the alphabet undone for every token at once
    for i in range(smol.vocab_size):
        assert table[i] == smol.token_bytes(i), i
        assert ll.is_special_token(i) == smol.is_special(i), i
        if not smol.is_special(i):
            assert ll.decode_bytes([i]) == smol.token_bytes(i), i


def test_the_vocabulary_is_built_once_by_the_first_compiles_together(smol):
    structured = StructuredOutput(smol, mask_threads=1)
    assert not structured.vocabulary_built
    with ThreadPoolExecutor(4) as pool:
        grammars = list(pool.map(lambda _: structured.compile(Regex("[a-z]+")), range(4)))
    assert structured.vocabulary_built and all(g.vocab_size == 49152 for g in grammars)
    assert structured.ll_tokenizer is structured.ll_tokenizer  # one copy, kept


def test_a_vocabulary_that_cannot_be_built_fails_every_compile_with_the_reason(smol):
    structured = StructuredOutput(smol, eos_token_ids=[10**6], mask_threads=1)  # an end id past the vocabulary
    for _ in range(2):  # remembered, not rebuilt
        with pytest.raises(GrammarVocabularyError, match="unavailable for this model.*out of range"):
            structured.compile(Regex("[a-z]+"))
    assert not structured.vocabulary_built


@pytest.mark.parametrize(
    "constraint, text",
    [
        (JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}), '{"a": 12}'),
        (JsonObject(), '{"x": [1, {"y": null}]}'),
        (Regex(r"[0-9]{3}-[a-z]{2}"), "123-ab"),
        (Choice(("yes", "no")), "no"),
        (LarkGrammar('start: "A" NUM\nNUM: /[0-9]+/'), "A42"),
    ],
)
def test_each_kind_of_constraint_compiles_and_accepts_a_matching_text(smol, structured, constraint, text):
    grammar = structured.compile(constraint)
    matcher = grammar.matcher()
    assert feed(smol, matcher, text)
    assert matcher.error() == ""
    assert 2 in allowed(matcher, grammar.vocab_size)  # complete: EOS is allowed now


def test_a_finished_json_document_ends_the_grammar_and_a_wrong_token_is_an_error(smol, structured):
    grammar = structured.compile(JsonSchema({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
                                             "additionalProperties": False}))
    done = grammar.matcher()
    assert feed(smol, done, '{"a": true}') and done.is_finished()
    wrong = grammar.matcher()  # matchers of one grammar are independent
    assert not feed(smol, wrong, '{"a": 1}')
    assert "doesn't satisfy the grammar" in wrong.error()


@pytest.mark.parametrize(
    "constraint, text",
    [
        (JsonSchema({"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 2}), '["abcde", "x"]'),
        (JsonSchema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 20},
                                                      "e": {"enum": ["red", "green"]}}, "required": ["n", "e"]}),
         '{"n": 12, "e": "red"}'),
        (Regex(r"[0-9]{3}-[a-z]{2}"), "123-ab"),
        (LarkGrammar('start: "A" NUM ("." NUM)?\nNUM: /[0-9]+/'), "A42.7"),
        (tool_call_grammar(SMOLLM2, [FunctionTool("now"), FunctionTool("f", {"type": "object", "properties": {"x": {}}})],
                           ToolChoice("auto")), 'Ok.<tool_call>[{"name": "f", "arguments": {"x": 7}}]</tool_call>'),
    ],
)
def test_allows_only_what_the_mask_allows_and_leaves_the_matcher_as_it_was(smol, structured, constraint, text):
    """The sampler takes a greedy row's unmasked argmax when `allows` says yes (engine/grammar_mask.py):
    at every state it must say yes only to tokens the mask allows, EOS at the end included, and say
    it to all of them wherever the grammar forces no bytes (else rows pay for masks they need not).
    A refusal leaves no error."""
    grammar = structured.compile(constraint)
    matcher = grammar.matcher()
    exact_states = 0
    for token in [*smol.encode(text), None]:
        if matcher.is_finished():  # its sequence has ended: nothing more is sampled
            break
        mask = allowed(matcher, grammar.vocab_size)
        says_yes = {t for t in range(grammar.vocab_size) if matcher.allows(t)}
        assert says_yes <= mask
        if not matcher.ll.compute_ff_bytes():
            assert says_yes == mask
            exact_states += says_yes == mask
        assert allowed(matcher, grammar.vocab_size) == mask and matcher.error() == ""
        if token is not None:
            assert matcher.accept(token)
    assert matcher.is_finished() or 2 in says_yes  # the walk ended where the output is complete
    assert exact_states >= 3
    failed = grammar.matcher()
    assert not failed.accept(1) and not any(failed.allows(t) for t in range(grammar.vocab_size))  # <|im_start|>


def test_control_tokens_never_appear_inside_json_and_eos_only_when_complete(smol, structured):
    grammar = structured.compile(JsonSchema({"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}))
    matcher = grammar.matcher()
    for prefix in ['{', '"s', '": "', "hello", " world"]:
        assert feed(smol, matcher, prefix)
        assert not allowed(matcher, grammar.vocab_size) & CONTROL_IDS, prefix
    assert feed(smol, matcher, '"}')
    assert allowed(matcher, grammar.vocab_size) & CONTROL_IDS == EOS_IDS


def test_json_whitespace_is_bounded(smol, structured):
    grammar = structured.compile(JsonObject())
    assert feed(smol, grammar.matcher(), "{" + " " * JSON_WHITESPACE_MAX + '"a": 1}')
    too_much = grammar.matcher()
    assert not feed(smol, too_much, "{" + " " * (JSON_WHITESPACE_MAX + 1) + '"a": 1}')


@pytest.mark.parametrize(
    "schema, named",
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
        ({"type": "string", "format": "iri"}, "iri"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1}, "maxProperties"),
        ({"type": "wat"}, "wat"),
        ({"properties": 3}, "properties"),
    ],
)
def test_a_schema_llguidance_cannot_enforce_is_a_typed_error_naming_the_keyword(structured, schema, named):
    with pytest.raises(StructuredOutputError) as info:
        structured.compile(JsonSchema(schema))
    assert info.value.kind == "rejected"
    assert named in info.value.message
    assert "<" not in info.value.message  # no debugging appendix


def test_a_non_strict_schema_ignores_what_it_cannot_enforce_and_says_so(smol, structured):
    grammar = structured.compile(JsonSchema({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, strict=False))
    assert any("uniqueItems" in w for w in grammar.warnings)
    assert feed(smol, grammar.matcher(), "[1, 1]")


@pytest.mark.parametrize(
    "constraint, kind, named",
    [
        (Regex(""), "invalid", "regex"),
        (Choice(()), "invalid", "choice"),
        (Choice(("a", "")), "invalid", "choice"),
        (JsonSchema([1, 2]), "invalid", "JSON schema"),
        (JsonSchema({"const": float("nan")}), "invalid", "not JSON"),
        (LarkGrammar("start: nowhere"), "rejected", "nowhere"),
        (Regex("a{0}"), "invalid", "empty"),
    ],
)
def test_malformed_constraints_are_typed_errors(structured, constraint, kind, named):
    with pytest.raises(StructuredOutputError) as info:
        structured.compile(constraint)
    assert info.value.kind == kind
    assert named in info.value.message


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    "schema, named",
    [
        (nested(200), "deeper than 64"),
        (nested(5000), "deeper than 64"),  # json.dumps alone would recurse past Python's limit
        ({"type": "object", "properties": {f"p{i}": {"enum": [f"v{j}" for j in range(40)]} for i in range(3000)}}, "65536 bytes"),
    ],
)
def test_hostile_schemas_cost_a_limit_error_fast(structured, schema, named):
    started = time.perf_counter()
    with pytest.raises(StructuredOutputError) as info:
        structured.compile(JsonSchema(schema))
    assert info.value.kind == "limit" and named in info.value.message
    assert time.perf_counter() - started < 5  # a generous bound on a loaded 2-core machine; typically < 0.1 s


def test_llguidance_work_limits_apply_to_what_passes_chatforge_checks(smol):
    tight = StructuredOutput(smol, limits=StructuredLimits(max_grammar_size=200), mask_threads=1)
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 5} for i in range(40)}}
    with pytest.raises(StructuredOutputError) as info:
        tight.compile(JsonSchema(schema))
    assert info.value.kind == "rejected"


def test_a_model_vocabulary_wider_than_the_tokenizer_masks_the_padding(tiny_spm):
    wide = tiny_spm.vocab_size + 40
    structured = StructuredOutput(tiny_spm, wide, mask_threads=1)
    grammar = structured.compile(Regex("[a-z]+"))
    assert grammar.vocab_size == wide
    ok = allowed(grammar.matcher(), wide)
    assert ok and max(ok) < tiny_spm.vocab_size
    assert all(tiny_spm.token_bytes(i).isalpha() for i in ok)


def test_compiled_schemas_carry_the_bounded_whitespace_option(structured):
    grammar = structured.compile(JsonSchema({"type": "string"}))
    source = json.loads(grammar.source)
    assert source["grammars"][0]["json_schema"]["x-guidance"]["whitespace_pattern"].endswith("{1,%d}" % JSON_WHITESPACE_MAX)
