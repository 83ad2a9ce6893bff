"""The models this server answers for: ids, aliases, context lengths, prices, and the engine
that runs each."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatforge.service.errors import ModelNotFoundError
from chatforge.settings import ModelEntry, ModelPrice

if TYPE_CHECKING:
    from chatforge.engine.async_engine import AsyncEngine
    from chatforge.engine.sampling_params import SamplingParams
    from chatforge.models.source import ModelSource
    from chatforge.text.chat_template import ChatTemplate
    from chatforge.text.structured import StructuredOutput
    from chatforge.text.tokenizer import Tokenizer


@dataclass
class ServedModel:
    model_id: str
    tokenizer: Tokenizer
    template: ChatTemplate | None  # None: the model has none and none was configured (chat is refused)
    engine: AsyncEngine  # or upstream.remote_engine.RemoteEngine: the same surface, on other machines
    structured: StructuredOutput  # compiles constraints for this model's vocabulary (built on first use)
    context_length: int
    created: int  # unix time the model was loaded, for /v1/models
    price: ModelPrice = field(default_factory=ModelPrice)
    aliases: tuple[str, ...] = ()
    # Raises InvalidRequestError for sampling its engine cannot honour, before admission (a
    # model on upstreams that do not take every field); None: the engine takes them all.
    check_sampling: Callable[[SamplingParams], None] | None = None


def served_names(entry: ModelEntry, source: ModelSource) -> tuple[str, tuple[str, ...]]:
    """(id, aliases) a model is served under: the entry's id, else the source's. A packaged model
    keeps its well-known names (id, aliases) when renamed; a file's name is dropped."""
    model_id = entry.id or source.model_id
    known = (source.model_id, *source.aliases) if source.aliases else ()
    return model_id, tuple(n for n in dict.fromkeys([*entry.aliases, *known]) if n != model_id)


def priced(model: ServedModel, prices: Mapping[str, ModelPrice]) -> ServedModel:
    """`model` with its configured price, found by its id or one of its aliases."""
    price = prices.get(model.model_id) or next((prices[a] for a in model.aliases if a in prices), None)
    if price is not None:
        model.price = price
    return model


class ModelCatalog:
    def __init__(self, models: list[ServedModel]):
        if not models:
            raise ValueError("a catalog needs at least one model")
        self.models = models
        self.default = models[0]
        self._by_name: dict[str, ServedModel] = {}
        for m in models:
            for name in (m.model_id, *m.aliases):
                self._by_name.setdefault(name, m)

    def get(self, name: str | None) -> ServedModel:
        """The model called `name` (an id or alias); the default model for None."""
        if name is None:
            return self.default
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def canonical_id(self, name: str | None) -> str:
        return self.get(name).model_id
