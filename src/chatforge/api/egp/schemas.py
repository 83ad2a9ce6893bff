"""Scale EGP v4 `POST /v4/models/{model_deployment_id}/chat-completions` wire schemas, as the
page and Scale's own SDK (`scale_gp.types.models.chat_completion_create_params`) define them:
the sampling fields are top-level siblings of `model_request_parameters`, whose `bindings` is a
key/value bag (here: the sampling fields it may set, with their bounds).

Unknown fields are refused (400 naming the field); types are strict. Fields chatforge cannot
honour are not part of the schema, so they are refused like any unknown field: image parts (the
models read text) and `reasoning_effort` (no chatforge model is a reasoning model).
`temperature` has no upper bound here: above the model's maximum it is clamped, as EGP
documents, not refused. Class names carry the dialect so that /openapi.json stays unambiguous.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from chatforge.api.wire import SEED_MAX, WholeNumber, WireModel
from chatforge.service.prepare import RESERVED_TEMPLATE_VARIABLES

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20


class EgpTextPart(WireModel):
    type: Literal["text"] = "text"
    text: str


class EgpHistoryMessage(WireModel):
    # The SDK leaves `role` optional: a message without one is the user's.
    role: Literal["user", "assistant", "system"] = "user"
    content: str | list[EgpTextPart]


class EgpBindings(WireModel):
    """What `model_request_parameters.bindings` may set: per-request values of known sampling
    fields (the top-level ones plus `seed`, `repetition_penalty`, `min_p`), which override the
    top-level fields of the same name. Numbers only; a whole number may come as 5.0, since the
    SDK types every binding as a float."""

    temperature: float | None = Field(default=None, ge=0)
    max_tokens: WholeNumber | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: WholeNumber | None = Field(default=None, ge=-1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: WholeNumber | None = Field(default=None, ge=0, le=SEED_MAX)
    repetition_penalty: float | None = Field(default=None, gt=0, le=5)
    min_p: float | None = Field(default=None, ge=0, le=1)


class EgpParameterBindings(WireModel):
    bindings: EgpBindings


StopSequence = Annotated[str, Field(min_length=1)]


class EgpChatRequest(WireModel):
    chat_history: list[EgpHistoryMessage] = Field(description="earlier turns, oldest first; may be empty")
    prompt: str = Field(description="the new user turn")
    model_request_parameters: EgpParameterBindings | None = None
    temperature: float | None = Field(default=None, ge=0, description="default 0.2; 0 = greedy; clamped to the model's maximum")
    stop_sequences: list[StopSequence] | None = Field(default=None, max_length=MAX_STOP)
    max_tokens: WholeNumber | None = Field(default=None, ge=1, description="default: the rest of the context")
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: float | None = Field(default=None, ge=-1, multiple_of=1, description="a whole number; 0 or -1 = off")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    logprobs: bool = Field(default=False, description="top_logprobs > 0 implies it")
    top_logprobs: WholeNumber | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    chat_template: str | None = Field(default=None, description="a Jinja chat template, rendered in the sandbox")
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"propertyNames": {"not": {"enum": sorted(RESERVED_TEMPLATE_VARIABLES)}}}
    )

    @field_validator("top_k")
    @classmethod
    def _whole_top_k(cls, value: float | None) -> float | None:
        # multipleOf's float check lets a tiny fraction such as 1e-42 through
        if value is not None and not value.is_integer():
            raise ValueError("must be a whole number")
        return value


# -- responses (documentation and golden tests; the router writes plain dicts) ----------------
class EgpTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class EgpTokenLogprob(EgpTopLogprob):
    top_logprobs: list[EgpTopLogprob]


class EgpChoiceLogprobs(BaseModel):
    content: list[EgpTokenLogprob] | None


class EgpChoice(BaseModel):
    index: int
    logprobs: EgpChoiceLogprobs | None


class CompletionResponse(BaseModel):
    completions: list[tuple[str, list[str]]] = Field(description="[[prompt, [completion]]]")
    choices: list[EgpChoice]
    finish_reason: Literal["stop", "length"] | None
    prompt_tokens: int | None = None
    response_tokens: int | None = None


class EgpErrorResponse(BaseModel):
    detail: str
    code: str
    param: str | None


class EgpModelDeployment(BaseModel):
    """One item of `GET /v4/model-deployments`: the fields of Scale's `ModelDeployment` that
    chatforge has (the model it serves is `model_instance_id`)."""

    id: str
    name: str
    account_id: str | None  # the owning account's name; None for a deployment of the config file
    model_instance_id: str
    status: Literal["READY"]


class EgpModelDeploymentList(BaseModel):
    items: list[EgpModelDeployment]
    current_page: int
    items_per_page: int
    total_item_count: int
