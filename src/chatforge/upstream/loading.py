"""A model served on upstreams: its tokenizer, chat template, names and context length, read
from the same files the nodes load, without its weights (and without torch). The gateway renders
and tokenizes every request itself, so it admits and meters by the real prompt size, and holds
stop strings and detokenization; the upstreams see token ids only.

The context length is the model's, capped by `engine.max_model_len` when set: give gateways and
nodes the same value. A node that holds less refuses the request with its own numbers (a 400).
"""

from __future__ import annotations

import logging
import time

from chatforge.models.config_files import read_config
from chatforge.heap import return_free_heap
from chatforge.models.source import resolve_model
from chatforge.service.catalog import ModelCatalog, ServedModel, priced, served_names
from chatforge.settings import ModelEntry, Settings
from chatforge.text.named_templates import template_for_model
from chatforge.text.structured import StructuredOutput
from chatforge.text.tokenizer import load_tokenizer
from chatforge.upstream.client import build_client
from chatforge.upstream.health import Upstream
from chatforge.upstream.remote_engine import RemoteEngine

log = logging.getLogger("chatforge.loading")


class NoUpstreamsError(ValueError):
    """A gateway was asked to serve a model that has no upstreams."""


def remote_model(entry: ModelEntry, settings: Settings) -> ServedModel:
    source = resolve_model(entry.path)
    tokenizer = load_tokenizer(source)
    template = template_for_model(tokenizer, entry.chat_template)
    config = read_config(source)
    model_id, aliases = served_names(entry, source)
    stop_ids = sorted(tokenizer.end_of_turn_ids)
    upstreams = [Upstream(build_client(u, model_id, settings.fleet, stop_ids)) for u in entry.upstreams]
    context = min(settings.engine.max_model_len or config.max_position_embeddings, config.max_position_embeddings)
    # Constraints are compiled here too: a bad one is refused before admission, as on a node, and
    # what a node receives is the compiled grammar's text.
    structured = StructuredOutput(tokenizer, config.vocab_size, eos_token_ids=stop_ids, mask_threads=1)
    return_free_heap()  # what building the tokenizer freed (chatforge/heap.py)
    log.info("%s on %d upstream(s): %s", model_id, len(upstreams), ", ".join(f"{u.kind} {u.url}" for u in upstreams))
    engine = RemoteEngine(model_id, upstreams, settings.fleet)
    return ServedModel(
        model_id=model_id,
        tokenizer=tokenizer,
        template=template,
        engine=engine,
        structured=structured,
        context_length=context,
        created=int(time.time()),
        aliases=aliases,
        check_sampling=engine.check_sampling,
    )


def load_gateway_catalog(settings: Settings) -> ModelCatalog:
    """Every model on its upstreams; a model without any is refused (a gateway loads no weights)."""
    models = []
    for entry in settings.model_entries():
        if not entry.upstreams:
            raise NoUpstreamsError(f"--gateway loads no weights, but the model {entry.id or entry.path or 'default'} has no upstreams "
                             "(give it some: upstreams in its [[models]] entry, or --upstream KIND=URL)")
        models.append(priced(remote_model(entry, settings), settings.prices))
    return ModelCatalog(models)
