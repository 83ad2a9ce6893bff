"""Turns a model path or id into a ServedModel: weights, tokenizer, chat template, a running engine."""

from __future__ import annotations

import logging
import threading
import time

from chatforge.engine.async_engine import AsyncEngine
from chatforge.engine.config import EngineConfig
from chatforge.engine.llm_engine import LLMEngine
from chatforge.models.source import BUNDLED_ALIASES, BUNDLED_MODEL_ID, resolve_model
from chatforge.service.catalog import ModelCatalog, ServedModel
from chatforge.settings import ModelPrice, Settings
from chatforge.text.chat_template import ChatTemplate
from chatforge.text.structured import StructuredOutput
from chatforge.text.tokenizer import load_tokenizer

log = logging.getLogger("chatforge.loading")


def load_served_model(path_or_id: str | None, cfg: EngineConfig, price: ModelPrice | None = None) -> ServedModel:
    t0 = time.perf_counter()
    source = resolve_model(path_or_id)
    tokenizer = load_tokenizer(source)
    template = ChatTemplate.for_tokenizer(tokenizer)
    stop_ids = sorted(tokenizer.end_of_turn_ids)
    llm = LLMEngine.from_source(source, cfg, stop_token_ids=stop_ids)
    # Grammars end only where the engine would: on its stop ids. Masks are filled on the
    # engine's threads' worth of llguidance workers.
    structured = StructuredOutput(tokenizer, llm.vocab_size, eos_token_ids=stop_ids, mask_threads=cfg.torch_threads)
    engine = AsyncEngine(llm)
    engine.start()
    aliases = BUNDLED_ALIASES if source.model_id == BUNDLED_MODEL_ID else ()
    log.info("loaded %s from %s in %.2f s", source.model_id, source.path, time.perf_counter() - t0)
    return ServedModel(
        model_id=source.model_id,
        tokenizer=tokenizer,
        template=template,
        engine=engine,
        structured=structured,
        context_length=llm.max_model_len,
        created=int(time.time()),
        price=price or ModelPrice(),
        aliases=aliases,
    )


def load_catalog(settings: Settings) -> ModelCatalog:
    """Load every model of `settings` and start its engine, on a thread of its own that ends
    before this returns (call it from any thread).

    Why: loading runs torch's parallel kernels, and a thread that has run them keeps an OpenMP
    team for as long as it lives. With the server's main thread holding such a team, every
    parallel region of the engine thread ran 1.4-2.4x slower and single-stream decoding at half
    speed on 2 cores (measured; most likely libgomp's shorter spinning once it manages more
    threads than there are CPUs, which GOMP_SPINCOUNT and OMP_WAIT_POLICY did not undo). A
    loader thread that exits takes its team with it, and the slowdown with it."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["catalog"] = _load_catalog(settings)
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            box["error"] = e

    thread = threading.Thread(target=run, name="chatforge-loader")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["catalog"]


def _load_catalog(settings: Settings) -> ModelCatalog:
    models = []
    for path_or_id in settings.models or [None]:
        served = load_served_model(path_or_id, settings.engine)
        price = settings.prices.get(served.model_id) or next(
            (settings.prices[a] for a in served.aliases if a in settings.prices), None
        )
        if price is not None:
            served.price = price
        models.append(served)
    return ModelCatalog(models)
