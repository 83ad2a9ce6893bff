"""Constrained decoding with llguidance: constraints compiled per request, matchers per sequence.

One `StructuredOutput` per model (made at load time, in microseconds) holds llguidance's view of
the model's vocabulary, built when the first constraint is compiled (text/grammar_vocab.py:
~0.2 s for a 49k vocabulary, 1-2 s for 262k), and a parallel mask executor. For each request the
service compiles the request's constraint before admission:

    grammar = structured.compile(JsonSchema(schema, strict=True))   # 1-8 ms, or StructuredOutputError
    SamplingParams(..., grammar=grammar)

`compile` returns an immutable `CompiledGrammar` (engine/grammar.py's `Grammar`): the engine starts
one `LLGuidanceMatcher` per sequence from it. A constraint the library cannot enforce exactly
(an unsupported keyword, a lookahead pattern, an unknown format, a remote `$ref`) is an error
naming it, never a silently weaker grammar; `strict=False` on a JSON schema ignores such keywords
instead and reports them in `warnings`.

Hostile input costs an error, not a stalled engine: the schema's size and nesting depth are
checked before llguidance sees it, llguidance's own limits (`LLParserLimits`) bound grammar size,
lexer states and the work of each mask step, and compiling computes the first mask, so a grammar
whose lexer cannot be built fails here rather than in the engine. JSON whitespace is bounded:
at most `JSON_WHITESPACE_MAX` characters wherever JSON allows whitespace (runaway whitespace
until `max_tokens` is a known failure of unbounded modes).

The vocabulary llguidance sees is the model's own (text/grammar_vocab.py), with its end-of-turn
ids as EOS, allowed only where the grammar is complete. When that vocabulary cannot be built,
`compile` raises `GrammarVocabularyError` (not the caller's fault: the service's 503).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.numpy as llnp
import numpy as np

from chatforge.text.grammar_vocab import GrammarVocabularyError, LazyGrammarVocabulary  # noqa: F401 - re-exported
from chatforge.text.tokenizer import Tokenizer

if TYPE_CHECKING:
    from chatforge.engine.grammar import GrammarMatcher

JSON_WHITESPACE_MAX = 16  # characters of whitespace at one JSON position (indentation up to ~14 spaces)
JSON_WHITESPACE = r"[\x20\x0A\x0D\x09]{1,%d}" % JSON_WHITESPACE_MAX


class StructuredOutputError(ValueError):
    """A constraint that cannot be compiled. `kind`: "invalid" (not a schema, an empty regex...),
    "limit" (over chatforge's size or depth limits), or "rejected" (llguidance refused it: a
    feature it cannot enforce, an invalid schema or pattern, or one of its own work limits).
    The message names the keyword, pattern or limit, and is safe to show to the caller."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.message = message
        self.kind = kind


# -- constraints: what a request asks for ----------------------------------------------------


@dataclass(frozen=True)
class JsonSchema:
    schema: Mapping[str, Any] | bool
    strict: bool = True  # False: keywords llguidance cannot enforce are ignored (see warnings)


@dataclass(frozen=True)
class JsonObject:
    """Any JSON object (OpenAI's `json_object`)."""


@dataclass(frozen=True)
class Regex:
    pattern: str  # the whole output matches it (Rust regex syntax, no lookaround)


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]  # the output is exactly one of them


@dataclass(frozen=True)
class LarkGrammar:
    source: str  # llguidance's Lark dialect (with %json, special tokens, lazy lexemes)


Constraint = JsonSchema | JsonObject | Regex | Choice | LarkGrammar


@dataclass(frozen=True)
class CompiledSource:
    """llguidance's grammar text as `compile` made it (`CompiledGrammar.source`): how a constraint
    a gateway compiled travels to the node that runs the request (upstream/protocol.py), to be
    compiled there again for the node's own matchers."""

    source: str


@dataclass(frozen=True)
class StructuredLimits:
    max_source_bytes: int = 64 * 1024  # one schema as JSON, a regex, the choices together
    max_grammar_bytes: int = 512 * 1024  # a Lark grammar (a tool-call grammar holds every tool's schema)
    max_depth: int = 64  # nesting of the schema document (objects and arrays)
    max_choices: int = 1024
    # llguidance's LLParserLimits (its defaults, but for the lexer states: ~1-2 kB each).
    max_items_in_row: int = 2000
    initial_lexer_fuel: int = 1_000_000  # ~20 ms of building the lexer
    step_lexer_fuel: int = 200_000  # ~14 ms of lexer work per mask
    step_max_items: int = 50_000  # Earley items per mask
    max_lexer_states: int = 50_000
    max_grammar_size: int = 500_000

    def parser_limits(self) -> llguidance.LLParserLimits:
        return llguidance.LLParserLimits(
            max_items_in_row=self.max_items_in_row,
            initial_lexer_fuel=self.initial_lexer_fuel,
            step_lexer_fuel=self.step_lexer_fuel,
            step_max_items=self.step_max_items,
            max_lexer_states=self.max_lexer_states,
            max_grammar_size=self.max_grammar_size,
            verbose_errors=False,  # verbose messages dump parser state and the grammar
        )


# -- the engine side: compiled grammar and live matcher ----------------------------------------


class _MaskFiller:
    """Fills mask rows of many matchers in one call on llguidance's thread pool (GIL released);
    a few rows (greedy rows whose argmax the grammar refused, engine/grammar_mask.py) on the
    calling thread: measured on 2 CPUs, the pool took 5% longer than a loop for 2 to 8 rows."""

    PARALLEL_MIN_ROWS = 8

    def __init__(self, threads: int):
        self._executor = llguidance.LLExecutor(num_threads=threads)

    def fill(self, items: Sequence[tuple[GrammarMatcher, int]], bitmask: np.ndarray) -> None:
        if len(items) < self.PARALLEL_MIN_ROWS:
            for matcher, k in items:
                llnp.fill_next_token_bitmask(matcher.ll, bitmask, k)
        else:
            llnp.fill_next_token_bitmask_par(self._executor, [(m.ll, k) for m, k in items], bitmask)


class LLGuidanceMatcher:
    """One sequence's llguidance matcher (engine/grammar.py's GrammarMatcher)."""

    def __init__(self, ll: llguidance.LLMatcher, mask_filler: _MaskFiller, eos_ids: frozenset[int]):
        self.ll = ll
        self.mask_filler = mask_filler
        self.eos_ids = eos_ids

    def allows(self, token_id: int) -> bool:
        # Where the grammar forces bytes, llguidance's mask holds only their canonical tokenization
        # (a shorter token of the same bytes would validate): no answer there, the mask decides.
        # NOTE: validate_tokens does not count an EOS id (measured: 0 where the mask allows it); the
        # mask allows EOS exactly where the grammar accepts. Checked against the mask in tests.
        if self.ll.is_error() or self.ll.compute_ff_bytes():  # (a failed matcher claims to accept EOS)
            return False
        if self.ll.validate_tokens([token_id]) == 1:
            return True
        return token_id in self.eos_ids and self.ll.is_accepting()

    def accept(self, token_id: int) -> bool:
        return self.ll.consume_token(token_id)  # False, and an error state, when it cannot

    def is_finished(self) -> bool:
        return self.ll.is_stopped()

    def error(self) -> str:
        return _clean(self.ll.get_error())

    def fork(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self.ll.deep_copy(), self.mask_filler, self.eos_ids)


@dataclass(frozen=True)
class CompiledGrammar:
    """A validated grammar (engine/grammar.py's Grammar). `matcher()` copies a pristine matcher
    that is never advanced itself (~2 us), so the n sequences of a request start alike."""

    source: str  # llguidance's grammar text (JSON), for logs and tests
    vocab_size: int
    warnings: tuple[str, ...]  # e.g. keywords a non-strict schema ignored
    _pristine: LLGuidanceMatcher = field(repr=False, compare=False)

    def matcher(self) -> LLGuidanceMatcher:
        return self._pristine.fork()


# -- the compiler -----------------------------------------------------------------------------


class StructuredOutput:
    """The per-model compiler. Thread-safe: compiling touches no shared mutable state."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int | None = None,
        *,
        eos_token_ids: Iterable[int] | None = None,
        limits: StructuredLimits = StructuredLimits(),
        mask_threads: int | None = None,
    ):
        """`vocab_size`: the model's (the logits' width; default the tokenizer's). `eos_token_ids`:
        the ids that end generation (default the tokenizer's end-of-turn ids). `mask_threads`:
        llguidance's pool for batched masks (default: the CPUs this process may use)."""
        self.vocab_size = vocab_size or tokenizer.vocab_size
        if self.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"the model's vocabulary ({self.vocab_size}) is smaller than the tokenizer's")
        eos = sorted(tokenizer.end_of_turn_ids if eos_token_ids is None else eos_token_ids)
        if not eos:
            raise ValueError("constrained decoding needs at least one end-of-sequence id")
        self._vocabulary = LazyGrammarVocabulary(tokenizer, self.vocab_size, eos)
        self._eos_ids = frozenset(eos)
        self.limits = limits
        self._parser_limits = limits.parser_limits()
        threads = mask_threads or len(os.sched_getaffinity(0))
        self._filler = _MaskFiller(threads)

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's copy of the vocabulary: built on first use (seconds for a large one),
        or GrammarVocabularyError. Call it off the event loop."""
        return self._vocabulary.get()

    @property
    def vocabulary_built(self) -> bool:
        return self._vocabulary.is_built

    def compile(self, constraint: Constraint | CompiledSource) -> CompiledGrammar:
        """Validate and compile; raises StructuredOutputError naming what is wrong, or
        GrammarVocabularyError when no constraint can be enforced for this model. The first
        call builds llguidance's vocabulary: call it off the event loop."""
        source = _grammar_source(constraint, self.limits)
        ll = llguidance.LLMatcher(self.ll_tokenizer, source, log_level=0, limits=self._parser_limits)
        if ll.is_error():  # the constructor never raises: errors put the matcher in an error state
            raise StructuredOutputError(_clean(ll.get_error()), "rejected")
        self._check_first_step(ll)
        warnings = tuple(_clean(w) for w in ll.get_grammar_warnings())
        return CompiledGrammar(source, self.vocab_size, warnings, LLGuidanceMatcher(ll, self._filler, self._eos_ids))

    def _check_first_step(self, ll: llguidance.LLMatcher) -> None:
        """Compute the first mask now: the lexer is built lazily, and a grammar too big to
        build fails here (an error for the caller) rather than in the engine."""
        bitmask = np.zeros((1, (self.vocab_size + 31) // 32), dtype=np.int32)
        llnp.fill_next_token_bitmask(ll, bitmask, 0)
        if ll.is_error():
            raise StructuredOutputError(_clean(ll.get_error()), "rejected")
        allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")
        allowed[self.ll_tokenizer.eos_tokens] = 0
        if not allowed.any():
            raise StructuredOutputError("the constraint allows only an empty output", "invalid")


# -- constraint -> llguidance grammar text ---------------------------------------------------


def _grammar_source(c: Constraint | CompiledSource, limits: StructuredLimits) -> str:
    """llguidance's grammar text for a constraint."""
    if isinstance(c, JsonObject):
        c = JsonSchema({"type": "object"})
    if isinstance(c, JsonSchema):
        schema = check_schema(c.schema, limits)
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=json_options(c.strict))
        except ValueError as e:
            raise StructuredOutputError(f"invalid JSON schema: {e}", "invalid") from None
    if isinstance(c, Regex):
        _check_text("regex", c.pattern, limits.max_source_bytes)
        return llguidance.LLMatcher.grammar_from_regex(c.pattern)
    if isinstance(c, Choice):
        return llguidance.LLMatcher.grammar_from_lark(_choice_lark(c.options, limits))
    if isinstance(c, LarkGrammar):
        _check_text("grammar", c.source, limits.max_grammar_bytes)
        return llguidance.LLMatcher.grammar_from_lark(c.source)
    if isinstance(c, CompiledSource):
        _check_text("grammar", c.source, limits.max_grammar_bytes)
        return c.source
    raise TypeError(f"not a constraint: {type(c).__name__}")


def lark_expression(c: Constraint, limits: StructuredLimits = StructuredLimits()) -> str:
    """The constraint as one Lark expression, to embed in a larger grammar (the content
    alternative of a tool-call grammar). A Lark grammar of its own cannot be embedded."""
    if isinstance(c, JsonObject):
        c = JsonSchema({"type": "object"})
    if isinstance(c, JsonSchema):
        schema = check_schema(c.schema, limits)
        schema.pop("x-guidance", None)
        return "%json " + json.dumps({"x-guidance": json_options(c.strict), **schema})
    if isinstance(c, Regex):
        _check_text("regex", c.pattern, limits.max_source_bytes)
        return "/" + _lark_regex_body(c.pattern) + "/"
    if isinstance(c, Choice):
        return "(" + _choice_lark(c.options, limits).removeprefix("start: ") + ")"
    if isinstance(c, LarkGrammar):
        raise StructuredOutputError("a Lark grammar cannot be combined with tools", "invalid")
    raise TypeError(f"not a constraint: {type(c).__name__}")


def _lark_regex_body(pattern: str) -> str:
    """`pattern` between Lark's slashes: its unescaped slashes and its line breaks escaped."""
    out, escaped = [], False
    for ch in pattern:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif ch == "/":
            out.append("\\/")
        elif ch in "\n\r":
            out.append("\\n" if ch == "\n" else "\\r")
        else:
            out.append(ch)
    return "".join(out)


def json_options(strict: bool) -> dict[str, Any]:
    """llguidance's JSON options (its "x-guidance" key) for every schema chatforge compiles."""
    return {"whitespace_pattern": JSON_WHITESPACE, "lenient": not strict}


def _check_text(what: str, text: str, max_bytes: int) -> None:
    if not isinstance(text, str) or not text:
        raise StructuredOutputError(f"the {what} must be a non-empty string", "invalid")
    if len(text.encode("utf-8")) > max_bytes:
        raise StructuredOutputError(f"the {what} exceeds {max_bytes} bytes", "limit")


def _choice_lark(options: Sequence[str], limits: StructuredLimits) -> str:
    if isinstance(options, str) or not options or not all(isinstance(o, str) and o for o in options):
        raise StructuredOutputError("choice must be a non-empty list of non-empty strings", "invalid")
    if len(options) > limits.max_choices:
        raise StructuredOutputError(f"choice has {len(options)} options; the limit is {limits.max_choices}", "limit")
    _check_text("choice", "".join(options), limits.max_source_bytes)
    return "start: " + " | ".join(json.dumps(o) for o in dict.fromkeys(options))


def check_schema(schema: Any, limits: StructuredLimits) -> dict[str, Any]:
    """A copy of the schema as plain JSON data, within the depth and size limits. The depth is
    measured first and without recursion, so a hostile nesting cannot exhaust the stack."""
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, Mapping):
        raise StructuredOutputError("a JSON schema must be an object or a boolean", "invalid")
    _check_depth(schema, limits.max_depth)
    try:
        text = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StructuredOutputError(f"the JSON schema is not JSON: {e}", "invalid") from None
    if len(text.encode("utf-8")) > limits.max_source_bytes:
        raise StructuredOutputError(f"the JSON schema exceeds {limits.max_source_bytes} bytes", "limit")
    return json.loads(text)


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (Mapping, list, tuple)):
            if level > max_depth:
                raise StructuredOutputError(f"the JSON schema nests deeper than {max_depth} levels", "limit")
            stack.extend((v, level + 1) for v in (node.values() if isinstance(node, Mapping) else node))


def _clean(message: str) -> str:
    """llguidance's message without its debugging appendix."""
    return message.replace("<non-verbose/>", "").strip()
