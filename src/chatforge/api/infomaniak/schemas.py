"""Infomaniak's legacy `POST /1/llm/{product_id}` wire schemas, field for field as its page
documents them (TGI's parameter names, the `{result, data}` envelope).

Unknown fields are refused (400 `validation_error` naming the field), and types are strict:
`"stream": 0` is an error, not False. Bounds the page leaves open follow TGI's own checks
(`0 < top_p <= 1`, `0 < typical_p <= 1`, `repetition_penalty > 0`). Class names carry the
dialect so that /openapi.json stays unambiguous.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from chatforge.api.wire import SEED_MAX, WholeNumber, WireModel

MAX_NEW_TOKENS = 5000
MAX_TRUNCATE = 30000
ProfileType = Literal["creative", "standard", "strict"]


class LegacyMessage(WireModel):
    # No system role: the legacy API takes the system prompt in `system_prompt`.
    role: Literal["user", "assistant"]
    content: str


class LegacyRequest(WireModel):
    messages: list[LegacyMessage] = Field(min_length=1, description="alternating user/assistant, ending with user")
    model: str | None = Field(default=None, min_length=1, description="default: the product's model")
    system_prompt: str | None = None
    profile_type: ProfileType | None = Field(default=None, description="default: standard; see GET /1/llm/profiles")
    max_new_tokens: WholeNumber | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS, description="default: the rest of the context")
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: WholeNumber | None = Field(default=None, ge=1, le=100)
    typical_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, description="1.0 = no penalty")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    truncate: WholeNumber | None = Field(default=None, ge=1, le=MAX_TRUNCATE, description="keep only the last N prompt tokens")
    seed: WholeNumber | None = Field(default=None, ge=0, le=SEED_MAX)
    stop: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, max_length=4, description="up to 4 sequences")
    stream: bool = False


# -- responses (documentation and golden tests; the router writes plain dicts) ----------------
class LegacyAssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class LegacyDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class LegacyChoice(BaseModel):
    index: int
    message: LegacyAssistantMessage | None = None  # in a whole response
    delta: LegacyDelta | None = None  # in a streamed one
    finish_reason: Literal["eos_token", "stop_sequence", "length"] | None


class LegacyUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class LegacyData(BaseModel):
    model: str
    created: int
    choices: list[LegacyChoice]
    usage: LegacyUsage | None


class LegacyResponse(BaseModel):
    result: Literal["success"]
    data: LegacyData


class InfomaniakErrorDetail(BaseModel):
    code: str
    description: str


class InfomaniakErrorResponse(BaseModel):
    result: Literal["error"]
    error: InfomaniakErrorDetail


class ProfilePreset(BaseModel):
    """A published `profile_type` preset: the sampling values it stands for."""

    temperature: float
    top_p: float
    top_k: int | None
    repetition_penalty: float


class ProfilePresets(BaseModel):
    result: Literal["success"]
    data: dict[str, ProfilePreset]


class InfomaniakProduct(BaseModel):
    id: int
    name: str
    models: list[str]


class InfomaniakProductList(BaseModel):
    result: Literal["success"]
    data: list[InfomaniakProduct]
