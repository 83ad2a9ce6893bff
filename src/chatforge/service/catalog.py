"""The models this server answers for: ids, aliases, context lengths, prices, and the engine
that runs each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatforge.service.errors import ModelNotFoundError
from chatforge.settings import ModelPrice

if TYPE_CHECKING:
    from chatforge.engine.async_engine import AsyncEngine
    from chatforge.text.chat_template import ChatTemplate
    from chatforge.text.structured import StructuredOutput
    from chatforge.text.tokenizer import Tokenizer


@dataclass
class ServedModel:
    model_id: str
    tokenizer: Tokenizer
    template: ChatTemplate | None  # None: the model has none and none was configured (chat is refused)
    engine: AsyncEngine
    structured: StructuredOutput  # compiles constraints for this model's vocabulary (built at load, ~0.5 s)
    context_length: int
    created: int  # unix time the model was loaded, for /v1/models
    price: ModelPrice = field(default_factory=ModelPrice)
    aliases: tuple[str, ...] = ()


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
