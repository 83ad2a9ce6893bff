"""Turns the configured models into ServedModels: weights, tokenizer, chat template, names, a KV
pool each, a running engine. Before any weights are read, every model's need is checked against
the memory available (models/memory.py)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from chatforge.engine.async_engine import AsyncEngine
from chatforge.engine.config import MiB, EngineConfig
from chatforge.engine.llm_engine import LLMEngine
from chatforge.heap import resident_bytes, return_free_heap
from chatforge.models.backend import choose_backend
from chatforge.models.config_files import read_config
from chatforge.models.memory import check_fits, kv_pool_shares
from chatforge.models.source import resolve_model
from chatforge.service.catalog import ModelCatalog, ServedModel, priced, served_names
from chatforge.settings import ModelEntry, ModelPrice, Settings
from chatforge.text.named_templates import template_for_model
from chatforge.text.structured import StructuredOutput
from chatforge.text.tokenizer import load_tokenizer
from chatforge.upstream.loading import load_gateway_catalog, remote_model

log = logging.getLogger("chatforge.loading")


def load_served_model(entry: ModelEntry | str | None, cfg: EngineConfig, price: ModelPrice | None = None) -> ServedModel:
    """One model, ready to serve: `entry` a path or id (None: the bundled default), or a config
    entry with its names and chat template."""
    t0, rss0 = time.perf_counter(), resident_bytes()
    entry = entry if isinstance(entry, ModelEntry) else ModelEntry(path=entry)
    source = resolve_model(entry.path)
    tokenizer = load_tokenizer(source)
    template = template_for_model(tokenizer, entry.chat_template)
    stop_ids = sorted(tokenizer.end_of_turn_ids)
    return_free_heap()  # what building the tokenizer freed (chatforge/heap.py)
    t1, rss1 = time.perf_counter(), resident_bytes()
    llm = LLMEngine.from_source(source, cfg, stop_token_ids=stop_ids)
    # Grammars end only where the engine would: on its stop ids. Masks are filled on the
    # engine's threads' worth of llguidance workers; their copy of the vocabulary is built by
    # the first constrained request.
    structured = StructuredOutput(tokenizer, llm.vocab_size, eos_token_ids=stop_ids, mask_threads=cfg.threads)
    engine = AsyncEngine(llm)
    engine.start()
    model_id, aliases = served_names(entry, source)
    return_free_heap()
    t2, rss2 = time.perf_counter(), resident_bytes()
    log.info("loaded %s from %s in %.2f s (tokenizer %.2f s, weights and engine %.2f s)%s", model_id, source.path,
             t2 - t0, t1 - t0, t2 - t1, _memory_note(rss0, rss1, rss2))
    return ServedModel(
        model_id=model_id,
        tokenizer=tokenizer,
        template=template,
        engine=engine,
        structured=structured,
        context_length=llm.max_model_len,
        created=int(time.time()),
        price=price or ModelPrice(),
        aliases=aliases,
    )


def _memory_note(before: int | None, tokenized: int | None, loaded: int | None) -> str:
    """The resident memory the load added, by phase (benchmarks/memory_check.py reads it)."""
    if None in (before, tokenized, loaded):
        return ""
    return (f"; resident memory {before / MiB:.0f} MiB before, +{(tokenized - before) / MiB:.0f} MiB tokenizer, "
            f"+{(loaded - tokenized) / MiB:.0f} MiB weights and engine")


def engine_configs(settings: Settings) -> list[EngineConfig]:
    """Each model's engine config, its KV pool sized: `engine.kv_cache_mb` is the budget of all
    served models together, split so that each holds the same number of tokens, unless an entry
    sets its own kv_cache_mb (models/memory.py `kv_pool_shares`). Also refuses, with the numbers,
    models that would not fit in the memory available (CPU: the weights as loaded plus the pools)."""
    entries, engine = [e for e in settings.model_entries() if settings.runs_locally(e)], settings.engine
    if not entries:
        return []
    sources = [resolve_model(e.path) for e in entries]
    configs = [read_config(s) for s in sources]
    choices = [choose_backend(c, engine.weights, engine.device, engine.dtype, engine.kernel_cache_dir, engine.compiler)
               for c in configs]
    per_token = [choice.kv_bytes_per_token(c) for choice, c in zip(choices, configs)]
    pools = kv_pool_shares(per_token, [e.kv_cache_mb and e.kv_cache_mb * MiB for e in entries], engine.kv_cache_mb * MiB)
    if engine.num_kv_blocks is not None:  # a fixed block count per model
        pools = [engine.num_kv_blocks * engine.block_size * t for t in per_token]
    if choices[0].device.type == "cpu":
        weights = sum(choice.weights_bytes(s) for choice, s in zip(choices, sources))
        held = "their own formats" if choices[0].native else choices[0].dtype
        check_fits(" + ".join(e.id or s.model_id for e, s in zip(entries, sources)), weights, sum(pools), held)
    return [dataclasses.replace(engine, kv_cache_mb=max(1, pool // MiB)) for pool in pools]


def load_catalog(settings: Settings) -> ModelCatalog:
    """Load every model of `settings` and start its engine, on a thread of its own that ends
    before this returns (call it from any thread).

    Why: loading runs torch's parallel kernels, and a thread that has run them keeps an OpenMP
    team for as long as it lives. With the server's main thread holding such a team, every
    parallel region of the engine thread ran 1.4-2.4x slower and single-stream decoding at half
    speed on 2 cores (measured; most likely libgomp's shorter spinning once it manages more
    threads than there are CPUs, which GOMP_SPINCOUNT and OMP_WAIT_POLICY did not undo). A
    loader thread that exits takes its team with it, and the slowdown with it.

    A gateway (`role = "gateway"`) loads no weights and needs no thread: every model is on its
    upstreams (upstream/loading.py)."""
    if settings.role == "gateway":
        return load_gateway_catalog(settings)
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
    """In the order configured: local models with their engines, the others on their upstreams."""
    local = iter(engine_configs(settings))
    models = []
    for entry in settings.model_entries():
        if settings.runs_locally(entry):
            models.append(load_served_model(entry, next(local)))
        else:
            models.append(remote_model(entry, settings))
    return ModelCatalog([priced(m, settings.prices) for m in models])
