"""Turns a model path or id into a ServedModel: weights, tokenizer, chat template, a running engine."""

from __future__ import annotations

import logging
import threading
import time

from chatforge.engine.async_engine import AsyncEngine
from chatforge.engine.config import EngineConfig
from chatforge.engine.llm_engine import LLMEngine
from chatforge.models.source import BUNDLED_ALIASES, BUNDLED_MODEL_ID, resolve_model
from chatforge.service.catalog import ModelCatalog, Price, ServedModel
from chatforge.settings import EngineSettings, Settings
from chatforge.text.chat_template import ChatTemplate
from chatforge.text.tokenizer import load_tokenizer

log = logging.getLogger("chatforge.loading")


def engine_config(s: EngineSettings) -> EngineConfig:
    return EngineConfig(
        block_size=s.block_size,
        num_kv_blocks=s.num_kv_blocks,
        kv_cache_bytes=s.kv_cache_mb * 1024 * 1024,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_waiting=s.max_waiting,
        max_model_len=s.max_model_len,
        threads=s.threads,
        device=s.device,
        dtype=s.dtype,
        enable_prefix_caching=s.enable_prefix_caching,
        weights=s.weights,
        kernel_cache_dir=s.kernel_cache_dir,
        compiler=s.compiler,
    )


def load_served_model(path_or_id: str | None, engine_settings: EngineSettings, price: Price | None = None) -> ServedModel:
    t0 = time.perf_counter()
    source = resolve_model(path_or_id)
    cfg = engine_config(engine_settings)
    tokenizer = load_tokenizer(source)
    template = ChatTemplate.for_tokenizer(tokenizer)
    llm = LLMEngine.from_source(source, cfg, stop_token_ids=sorted(tokenizer.end_of_turn_ids))
    engine = AsyncEngine(llm)
    engine.start()
    aliases = BUNDLED_ALIASES if source.model_id == BUNDLED_MODEL_ID else ()
    log.info("loaded %s from %s in %.2f s", source.model_id, source.path, time.perf_counter() - t0)
    return ServedModel(
        model_id=source.model_id,
        tokenizer=tokenizer,
        template=template,
        engine=engine,
        context_length=llm.max_model_len,
        created=int(time.time()),
        price=price or Price(),
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
            served.price = Price(price.input, price.output)
        models.append(served)
    return ModelCatalog(models)
