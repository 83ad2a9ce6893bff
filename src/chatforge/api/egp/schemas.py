"""Scale EGP v4 `POST /v4/models/{model_deployment_id}/chat-completions` wire schemas, as the
page and Scale's own SDK (`scale_gp.types.models.chat_completion_create_params`) define them:
the sampling fields are top-level siblings of `model_request_parameters`, whose `bindings` is a
flat key/value bag.

Unknown fields are refused (400 naming the field); types are strict. `temperature` has no upper
bound here: above the model's maximum it is clamped, as EGP documents, not refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
SEED_MAX = 2**64 - 1


class WireModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(WireModel):
    type: Literal["text"] = "text"
    text: str


class ImageUrl(WireModel):
    url: str
    detail: Literal["low", "high", "auto"] | None = None


class ImageUrlPart(WireModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageUrl


class ImageData(WireModel):
    data: str
    media_type: str
    detail: Literal["low", "high", "auto"] | None = None
    type: Literal["base64"] | None = None


class ImageDataPart(WireModel):
    type: Literal["image_data"] = "image_data"
    image_data: ImageData


class HistoryMessage(WireModel):
    # The SDK leaves `role` optional: a message without one is the user's.
    role: Literal["user", "assistant", "system"] = "user"
    content: str | list[TextPart | ImageUrlPart | ImageDataPart]


class ParameterBindings(WireModel):
    bindings: dict[str, str | float | bool]


class ChatCompletionRequest(WireModel):
    chat_history: list[HistoryMessage] = Field(description="earlier turns, oldest first; may be empty")
    prompt: str = Field(description="the new user turn")
    model_request_parameters: ParameterBindings | None = None
    temperature: float | None = Field(default=None, ge=0, description="default 0.2; 0 = greedy; clamped to the model's maximum")
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP)
    max_tokens: int | None = Field(default=None, ge=1, description="default: the rest of the context")
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: float | None = Field(default=None, ge=-1, description="a whole number; 0 or -1 = off")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    chat_template: str | None = Field(default=None, description="a Jinja chat template, rendered in the sandbox")
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class Bindings(BaseModel):
    """What `model_request_parameters.bindings` may set: per-request values of known sampling
    fields (the top-level ones plus `seed`, `repetition_penalty`, `min_p`). The bag carries
    strings, numbers and booleans, so numbers may come as numeric strings ("0.5"), whole numbers
    as 5.0; booleans and unknown names are refused."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    repetition_penalty: float | None = Field(default=None, gt=0, le=5)
    min_p: float | None = Field(default=None, ge=0, le=1)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value):
        # Lax number fields would read true as 1; every bindable field is a number.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value


# -- responses (documentation and golden tests; the router writes plain dicts) ----------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class Choice(BaseModel):
    index: int
    logprobs: ChoiceLogprobs | None


class CompletionResponse(BaseModel):
    completions: list[tuple[str, list[str]]] = Field(description="[[prompt, [completion]]]")
    choices: list[Choice]
    finish_reason: Literal["stop", "length"] | None
    prompt_tokens: int | None = None
    response_tokens: int | None = None


class ErrorResponse(BaseModel):
    detail: str
    code: str
    param: str | None
