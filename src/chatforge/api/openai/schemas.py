"""OpenAI / DeepInfra wire schemas (chat completions, legacy completions), as the vendors
document them.

Unknown-field policy: a field this server does not know is refused with 400 naming it, as
OpenAI itself does ("Unrecognized request argument supplied"), never silently ignored. Fields
that change nothing by nature (`user`, `prompt_cache_key`: prefix caching is automatic) are
accepted. Types are strict: `"stream": 0` is an error, not False.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from chatforge.api.openai.tool_schemas import (
    MessageToolCall, ProductResponseFormat, ResponseFormat, StructuredOutputs, Tool, ToolChoiceWire,
)
from chatforge.api.wire import WireModel

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # the union of DeepInfra's two documented ranges


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImageUrl(WireModel):
    url: str
    detail: str | None = None


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = Field(default=None, description="an assistant turn's calls")
    tool_call_id: str | None = Field(default=None, description="a tool turn: the call it answers")
    # What the openai client sends back when a caller appends an answer's message as it came:
    # accepted when empty, as nothing else is served.
    refusal: None = None
    annotations: list[Any] | None = Field(default=None, max_length=0)
    function_call: None = None
    audio: None = None


class StreamOptions(WireModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage on every chunk


class SamplingFields(WireModel):
    """The sampling fields the chat and completions routes share, with OpenAI's and DeepInfra's
    bounds, and the extensions honoured as vLLM does (top_k, min_p, repetition_penalty,
    min_tokens, ignore_eos, stop_token_ids)."""

    temperature: float | None = Field(default=None, ge=0, le=2, description="default 1; 0 = greedy")
    top_p: float | None = Field(default=None, gt=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, lt=1000, description="0 or -1 = off")
    stop: str | list[str] | None = Field(default=None, description="up to 4 sequences")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=5)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None


class ChatCompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="default: the rest of the context")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoiceWire | None = Field(default=None, description="default: auto with tools, none without")
    parallel_tool_calls: bool | None = Field(default=None, description="default true")
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = Field(default=None, description="vLLM's extension")
    chat_template_kwargs: dict[str, Any] | None = None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _one_prompt_shape(value, handler):
    # A union's error names only the member pydantic tried first ("should be a valid string");
    # say what the field takes instead.
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "prompt_shape", "must be a string, a list of strings, a list of token ids, or a list of such lists"
        ) from None


PromptInput = Annotated[str | list[str] | TokenIds | list[TokenIds], WrapValidator(_one_prompt_shape)]


class CompletionRequest(SamplingFields):
    """OpenAI's legacy completions (`POST /v1/completions`): a raw prompt, no chat template.
    Nullable fields take their default when null, as OpenAI's schema has them."""

    model: str = Field(min_length=1)
    prompt: PromptInput = Field(
        description="a text, token ids, or a list of either (a batch: choices are indexed prompt x n)"
    )
    max_tokens: int | None = Field(default=16, ge=0, description="default 16; null = the rest of the context; "
                                                                 "0 only with echo (scores the prompt)")
    n: int | None = Field(default=None, ge=1, le=16, description="default 1")
    best_of: int | None = Field(default=None, ge=0, le=20, description="only n itself: completions are not ranked")
    echo: bool | None = Field(default=None, description="the prompt before each completion (and its logprobs)")
    logprobs: int | None = Field(default=None, ge=0, le=5, description="logprobs of this many likeliest tokens too")
    suffix: str | None = Field(default=None, description="not supported: refused unless empty")
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class TokenizeRequest(WireModel):
    """vLLM's `/tokenize` (`prompt`, or `messages` rendered with the chat template) and
    llama.cpp's (`content`, `add_special`, `with_pieces`): exactly one of the three texts."""

    model: str | None = Field(default=None, min_length=1, description="default: the server's default model")
    prompt: str | None = None
    content: str | None = Field(default=None, description="llama.cpp's name for prompt")
    messages: list[Message] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = Field(default=True, description="with messages")
    add_special_tokens: bool | None = Field(default=None, description="default: true for a prompt, false for messages")
    add_special: bool | None = Field(default=None, description="llama.cpp's name for add_special_tokens")
    return_token_strs: bool = Field(default=False, description="vLLM: each token's text in token_strs")
    with_pieces: bool = Field(default=False, description="llama.cpp: tokens as {id, piece} objects")
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(WireModel):
    model: str | None = Field(default=None, min_length=1, description="default: the server's default model")
    tokens: list[Annotated[int, Field(ge=0)]]


class TokenPiece(BaseModel):
    id: int
    piece: str


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int] | list[TokenPiece]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str
    content: str  # llama.cpp's name, the same text


class ProductChatCompletionRequest(ChatCompletionRequest):
    """The Infomaniak successor route's body: OpenAI's, plus what TGI's Messages API accepts."""

    response_format: ProductResponseFormat | None = None
    tool_prompt: str | None = Field(default=None, description="TGI: the instruction on calling tools, before the tool list")


# -- responses (documentation and golden tests; the router writes plain dicts) ----------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None  # always null: required by OpenAI's schema


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str  # the model's own JSON text


class ResponseToolCall(BaseModel):
    id: str  # call_...
    type: Literal["function"]
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None  # null when the answer is only tool calls
    refusal: str | None  # always null: required by OpenAI's schema
    tool_calls: list[ResponseToolCall] | None = None  # present when the model called tools


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_cost: float
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # null for a prompt's first token
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str  # the model's id; differs from `id` on an alias's card
    context_length: int
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
