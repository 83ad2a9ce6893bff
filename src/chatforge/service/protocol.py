"""The one internal request and result model. Every dialect translates its wire body into a
`ChatRequest` and renders `ChatResult` / `ChatEvent`s back; nothing here knows a dialect.

The sampling knobs are the engine's own `SamplingParams` (re-exported here, like
`FinishReason`): a dialect fills them once, and the service only resolves `max_tokens` (None:
the rest of the context) and adds the grammar it compiles before handing them to the engine.
Tools, tool choices, tool calls and output constraints are the text layer's own types
(text/tool_format.py, text/tool_calls.py, text/structured.py), re-exported here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams
from chatforge.text.structured import Choice as ChoiceConstraint
from chatforge.text.structured import Constraint, JsonObject, JsonSchema, LarkGrammar, Regex
from chatforge.text.tool_calls import ToolCall, ToolCallArguments, ToolCallStart
from chatforge.text.tool_format import FunctionTool, ToolChoice

__all__ = [
    "ChatMessage", "SamplingParams", "ModelScope", "ChatRequest", "TokenInfo", "TokenLogprobs",
    "ChoiceDelta", "ChatEvent", "Choice", "ChatResult", "Usage", "FinishReason", "OutputFormat",
    "FunctionTool", "ToolChoice", "ToolCall", "ToolCallStart", "ToolCallArguments", "ToolCallDelta",
    "Constraint", "JsonSchema", "JsonObject", "Regex", "ChoiceConstraint", "LarkGrammar",
]

ToolCallDelta = ToolCallStart | ToolCallArguments


@dataclass
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str | None  # None: an assistant turn that only calls tools
    name: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers


@dataclass(frozen=True)
class OutputFormat:
    """What the content must be (response_format, structured_outputs): enforced by a grammar."""

    constraint: Constraint
    param: str  # the field that asked for it, named by errors ("response_format", "structured_outputs.json")
    kind: str  # for metrics: json_schema | json_object | regex | choice | grammar


@dataclass(frozen=True)
class ModelScope:
    """The models a request's product or deployment offers, from the platform's scope."""

    owner: str  # "product 10775", for the refusal's message
    models: tuple[str, ...] = ()  # ids or aliases; empty = every served model
    default: str | None = None  # run when the request names none; None = the server's default


@dataclass
class ChatRequest:
    request_id: str
    model: str | None  # as the caller named it; None: the default (of the server, product or deployment)
    messages: list[ChatMessage]
    # max_tokens None: the rest of the context (resolved by the service).
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=None))
    stream: bool = False
    # Generate nothing, only score the prompt (the completions route's `max_tokens: 0` with
    # `echo`): the engine samples one token, which the service drops.
    score_only: bool = False
    add_generation_prompt: bool = True
    # Raw prompts (the completions route): used instead of `messages`, without a chat template;
    # each a text or token ids. Choice i * n + j is completion j of prompt i.
    prompts: list[str | list[int]] | None = None
    # Keep only the last N prompt tokens (Infomaniak's `truncate`).
    truncate_prompt_tokens: int | None = None
    # Drop the oldest turns until the prompt and max_tokens fit (EGP's documented behaviour);
    # otherwise an over-long prompt is a ContextLengthExceededError.
    drop_oldest_turns: bool = False
    # A caller-supplied template (EGP), rendered in the sandbox like the model's own.
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Functions the model may call; tool_choice None: "auto" when there are tools, else "none".
    tools: list[FunctionTool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    tool_prompt: str | None = None  # replaces the adapter's instruction on calling tools (TGI's tool_prompt)
    output_format: OutputFormat | None = None


@dataclass
class TokenInfo:
    token: str  # the token's text (may be a partial UTF-8 sequence shown with replacement)
    token_id: int
    bytes: list[int]
    logprob: float | None  # None only for a prompt's first token: nothing precedes it


@dataclass
class TokenLogprobs:
    sampled: TokenInfo
    top: list[TokenInfo]  # best first; empty unless top_logprobs > 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated_cost: float  # USD, from the model's price: computed once, here
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChoiceDelta:
    index: int
    text: str
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: FinishReason | None = None
    # On a choice's first delta when the request asked for the prompt's logprobs: one per
    # prompt token (the first one's logprob is None: nothing precedes it).
    prompt_logprobs: list[TokenLogprobs] | None = None
    # Tool calls begun and their arguments' next fragments, after `text` (the model's exact JSON).
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class ChatEvent:
    """One step of an answer. `usage` is the running total as of this event; the last event
    has `done` set (every choice has finished by then)."""

    deltas: list[ChoiceDelta]
    usage: Usage
    done: bool = False


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: FinishReason  # TOOL_CALLS when the answer ended with calls
    logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # in the order the model wrote them


@dataclass
class ChatResult:
    request_id: str
    model: str
    created: int
    choices: list[Choice]
    usage: Usage
