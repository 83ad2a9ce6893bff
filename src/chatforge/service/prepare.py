"""Before any compute: a `ChatRequest` becomes a frozen `PreparedChat`, the plan the engine
runs. The model is resolved here, once (the request's name, else its scope's default, else the
server's; a scope that does not offer it is a 404), the conversation rendered with the chat
template (or the raw prompts tokenized as they are; tools, calls and their results as
service/constrain.py has the template read them), the context checked, `max_tokens` resolved,
and the grammar of the request's tool choice or output format compiled. The platform then
admits the request with its real prompt size before anything runs.

Compiling takes milliseconds (tens for many tools): the server calls `prepare` off its event loop.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.service.constrain import constrain, render_input
from chatforge.service.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from chatforge.service.protocol import ChatMessage, ChatRequest, ModelScope, SamplingParams
from chatforge.text.chat_template import ChatTemplate, ChatTemplateError
from chatforge.text.errors import TokenizerError
from chatforge.text.named_templates import NAMED_TEMPLATES
from chatforge.text.tokenizer import Tokenizer
from chatforge.text.tool_format import ToolCallFormat

# Set by the service itself; a caller's template kwargs may not override them.
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "add_generation_prompt", "tools", "documents"})


@dataclass(frozen=True)
class Prompt:
    text: str  # the rendered conversation, or the raw prompt (decoded when given as ids); never logged
    token_ids: tuple[int, ...]
    tool_format: ToolCallFormat | None = None  # the tool-call format the prompt taught, if tools are in it


@dataclass(frozen=True)
class PreparedChat:
    """What will run: one engine request per prompt, each with `sampling` (n completions)."""

    request: ChatRequest
    model: ServedModel
    model_name: str  # the name the answer echoes: as requested, else the scope's default, else the model id
    prompts: tuple[Prompt, ...]  # one for a chat; the raw prompts' batch on the completions route
    sampling: SamplingParams  # the request's, with max_tokens resolved and the compiled grammar
    created: int = field(default_factory=lambda: int(time.time()))
    tool_format: ToolCallFormat | None = None  # parse answers for calls in this format; None: no calls
    constraint_kind: str | None = None  # for metrics: "tools", "json_schema", ...; None: unconstrained

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.sampling.n

    @property
    def max_total_tokens(self) -> int:
        """The most tokens the request can take: what the rate limiter reserves."""
        return self.num_prompt_tokens + self.sampling.max_tokens * self.num_choices


def resolve_model(catalog: ModelCatalog, req: ChatRequest, scope: ModelScope | None = None) -> ServedModel:
    """The model the request runs on: the one it names, else its scope's default, else the catalog's;
    ModelNotFoundError when the scope (a product, a deployment) does not offer it."""
    model = catalog.get(_model_name(req, scope))
    if scope is not None and req.model is not None and not _offers(scope, model, catalog):
        raise ModelNotFoundError(f"The model `{req.model}` is not offered by {scope.owner}.", param="model")
    return model


def _model_name(req: ChatRequest, scope: ModelScope | None) -> str | None:
    return req.model if req.model is not None else (scope.default if scope is not None else None)


def prepare(catalog: ModelCatalog, req: ChatRequest, scope: ModelScope | None = None) -> PreparedChat:
    model = resolve_model(catalog, req, scope)
    name = _model_name(req, scope)
    wanted = 1 if req.score_only else req.params.max_tokens
    if req.prompts is not None:
        prompts = [_raw_prompt(model, p, req, wanted) for p in req.prompts]
    else:
        prompts = [_chat_prompt(model, req, wanted)]
    room = min(model.context_length - len(p.token_ids) for p in prompts)
    max_tokens = wanted if wanted is not None else room
    constrained = constrain(model, req, prompts[0].tool_format)
    sampling = dataclasses.replace(req.params, max_tokens=max_tokens, min_tokens=min(req.params.min_tokens, max_tokens),
                                   grammar=constrained.grammar)
    if model.check_sampling is not None:
        model.check_sampling(sampling)
    return PreparedChat(req, model, name or model.model_id, tuple(prompts), sampling,
                        tool_format=constrained.tool_format, constraint_kind=constrained.kind)


def _offers(scope: ModelScope, model: ServedModel, catalog: ModelCatalog) -> bool:
    return not scope.models or any(m in catalog and catalog.get(m) is model for m in scope.models)


def chat_template(model: ServedModel, req: ChatRequest) -> ChatTemplate:
    """The template that renders this request's conversation: its own (EGP), else the model's."""
    if req.chat_template is not None:
        try:
            return ChatTemplate(req.chat_template, model.tokenizer.special_tokens)
        except ChatTemplateError as e:
            raise InvalidRequestError(f"chat_template: {e}", param="chat_template") from None
    if model.template is None:  # a base model: raw prompts only, unless its operator gave it a template
        raise InvalidRequestError(
            f"the model `{model.model_id}` has no chat template, so it cannot take chat messages; "
            "the server's operator can give it one (--chat-template NAME_OR_FILE, named: "
            f"{', '.join(NAMED_TEMPLATES)}; or chat_template in its [[models]] entry)", param="model")
    return model.template


def encode_text(tokenizer: Tokenizer, text: str, param: str, add_special_tokens: bool = False) -> list[int]:
    """A request's text as token ids; text that is not valid Unicode (a lone UTF-16 surrogate such
    as JSON's "\\ud800", which Python keeps but no tokenizer takes) is the caller's 400."""
    try:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except TypeError:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequestError(f"{param} is not valid Unicode: a lone surrogate {text[e.start]!a} at "
                                      f"character {e.start}", param=param) from None
        raise


def _chat_prompt(model: ServedModel, req: ChatRequest, wanted: int | None) -> Prompt:
    template = chat_template(model, req)
    messages = list(req.messages)
    while True:
        text, tool_format = render(model, template, messages, req)
        ids = encode_text(model.tokenizer, text, "messages")
        if not ids:
            raise InvalidRequestError("the conversation renders to an empty prompt", param="messages")
        if req.truncate_prompt_tokens is not None:
            ids = ids[-req.truncate_prompt_tokens :]
        if model.context_length - len(ids) >= (wanted or 1):
            return Prompt(text, tuple(ids), tool_format)
        if req.drop_oldest_turns and _drop_oldest_turn(messages):
            continue
        raise context_error(model.context_length, len(ids), wanted)


def _raw_prompt(model: ServedModel, prompt: str | list[int], req: ChatRequest, wanted: int | None) -> Prompt:
    tokenizer = model.tokenizer
    if isinstance(prompt, str):
        text, ids = prompt, encode_text(tokenizer, prompt, "prompt", add_special_tokens=True)
    else:
        try:
            text, ids = tokenizer.decode(prompt, skip_special_tokens=False), list(prompt)
        except TokenizerError as e:
            raise InvalidRequestError(str(e), param="prompt") from None
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    if req.truncate_prompt_tokens is not None:
        ids = ids[-req.truncate_prompt_tokens :]
    if model.context_length - len(ids) < (wanted or 1):
        raise context_error(model.context_length, len(ids), wanted, param="prompt")
    return Prompt(text, tuple(ids))


def render(model: ServedModel, template: ChatTemplate, messages: list[ChatMessage],
           req: ChatRequest) -> tuple[str, ToolCallFormat | None]:
    """The conversation as prompt text, by `template` with the request's template arguments
    (tools, past calls and results as service/constrain.py has the template read them), and the
    tool-call format the prompt taught, if tools are in it."""
    clash = RESERVED_TEMPLATE_VARIABLES.intersection(req.chat_template_kwargs)
    if clash:
        raise InvalidRequestError(f"chat_template_kwargs may not set {sorted(clash)}", param="chat_template_kwargs")
    given = render_input(model, template, req, messages)
    try:
        text = template.render(given.messages, add_generation_prompt=req.add_generation_prompt, tools=given.tools,
                               **req.chat_template_kwargs)
        return text, given.tool_format
    except ChatTemplateError as e:
        # The model's own template can only refuse the messages; a template sent with the
        # request may just as well be at fault itself, so that is the parameter named.
        param = "chat_template" if req.chat_template is not None else "messages"
        raise InvalidRequestError(f"the chat template refused the conversation: {e}", param=param) from None


def _drop_oldest_turn(messages: list[ChatMessage]) -> bool:
    """Remove the oldest non-system message, keeping at least the newest one."""
    for i, m in enumerate(messages[:-1]):
        if m.role != "system":
            del messages[i]
            return True
    return False


def context_error(ctx: int, prompt_tokens: int, wanted: int | None, param: str = "messages") -> ContextLengthExceededError:
    if wanted is None:
        msg = (
            f"This model's maximum context length is {ctx} tokens. However, your {param} resulted in "
            f"{prompt_tokens} tokens, which leaves no room for a completion. Please reduce the length of the {param}."
        )
    else:
        msg = (
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the {param}, {wanted} in the completion). "
            f"Please reduce the length of the {param} or completion."
        )
    return ContextLengthExceededError(msg, prompt_tokens=prompt_tokens, context_length=ctx, param=param)
