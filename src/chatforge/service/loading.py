"""Turns the configured models into ServedModels: weights, tokenizer, chat template, names, a KV
pool each, a running engine. Before any weights are read, every model's need is checked against
the memory available (models/memory.py)."""

from __future__ import annotations

import logging
import threading
import time

from chatforge.engine.async_engine import AsyncEngine
from chatforge.engine.config import EngineConfig
from chatforge.engine.llm_engine import LLMEngine
from chatforge.engine.model_runner import kv_block_bytes, pick_device, pick_dtype
from chatforge.models.loader import read_config
from chatforge.models.memory import check_fits, kv_pool_shares, weights_bytes
from chatforge.models.source import resolve_model
from chatforge.service.catalog import ModelCatalog, Price, ServedModel
from chatforge.settings import EngineSettings, ModelEntry, Settings
from chatforge.text.named_templates import template_for_model
from chatforge.text.tokenizer import load_tokenizer

log = logging.getLogger("chatforge.loading")
_MiB = 1024 * 1024


def engine_config(s: EngineSettings, kv_cache_bytes: int | None = None) -> EngineConfig:
    return EngineConfig(
        block_size=s.block_size,
        num_kv_blocks=s.num_kv_blocks,
        kv_cache_bytes=kv_cache_bytes if kv_cache_bytes is not None else s.kv_cache_mb * _MiB,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_waiting=s.max_waiting,
        max_model_len=s.max_model_len,
        torch_threads=s.torch_threads,
        device=s.device,
        dtype=s.dtype,
        enable_prefix_caching=s.enable_prefix_caching,
        batch_invariant=s.batch_invariant,
        weights=s.weights,
    )


def load_served_model(entry: ModelEntry | str | None, engine_settings: EngineSettings, price: Price | None = None,
                      kv_cache_bytes: int | None = None) -> ServedModel:
    """One model, ready to serve: `entry` a path or id (or None, the bundled default), or a
    config entry with its names and chat template; `kv_cache_bytes` its KV pool (default:
    engine_settings.kv_cache_mb)."""
    t0 = time.perf_counter()
    entry = entry if isinstance(entry, ModelEntry) else ModelEntry(path=entry)
    source = resolve_model(entry.path)
    cfg = engine_config(engine_settings, kv_cache_bytes)
    tokenizer = load_tokenizer(source)
    template = template_for_model(tokenizer, entry.chat_template)
    llm = LLMEngine.from_source(source, cfg, stop_token_ids=sorted(tokenizer.end_of_turn_ids))
    engine = AsyncEngine(llm)
    engine.start()
    model_id = entry.id or source.model_id
    # A packaged model keeps its well-known names (id, aliases) when renamed; a file's name is dropped.
    known = (source.model_id, *source.aliases) if source.aliases else ()
    aliases = tuple(n for n in dict.fromkeys([*entry.aliases, *known]) if n != model_id)
    log.info("loaded %s from %s in %.2f s", model_id, source.path, time.perf_counter() - t0)
    return ServedModel(
        model_id=model_id,
        tokenizer=tokenizer,
        template=template,
        engine=engine,
        context_length=llm.max_model_len,
        created=int(time.time()),
        price=price or Price(),
        aliases=aliases,
    )


def kv_pools(settings: Settings) -> list[int]:
    """Each model's KV pool in bytes: `engine.kv_cache_mb` is the budget of all served models
    together, split so that each holds the same number of tokens, unless an entry sets its own
    kv_cache_mb (models/memory.py `kv_pool_shares`). Also refuses, with the numbers, a model that
    would not fit in the memory available (CPU only: the weights as loaded plus its pool)."""
    entries = settings.model_entries()
    sources = [resolve_model(e.path) for e in entries]
    configs = [read_config(s) for s in sources]
    device = pick_device(settings.engine.device)
    dtype = pick_dtype(settings.engine.dtype, device)
    per_token = [kv_block_bytes(c.num_hidden_layers, 1, c.num_key_value_heads, c.head_dim, dtype) for c in configs]
    pools = kv_pool_shares(per_token, [e.kv_cache_mb and e.kv_cache_mb * _MiB for e in entries],
                           settings.engine.kv_cache_mb * _MiB)
    if settings.engine.num_kv_blocks is not None:  # a fixed block count per model
        pools = [settings.engine.num_kv_blocks * settings.engine.block_size * t for t in per_token]
    if device.type == "cpu":
        weights = sum(weights_bytes(s.kind, s.path, dtype) for s in sources)
        check_fits(" + ".join(e.id or s.model_id for e, s in zip(entries, sources)), weights, sum(pools), dtype)
    return pools


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
    for entry, pool in zip(settings.model_entries(), kv_pools(settings)):
        served = load_served_model(entry, settings.engine, kv_cache_bytes=pool)
        price = settings.prices.get(served.model_id) or next(
            (settings.prices[a] for a in served.aliases if a in settings.prices), None
        )
        if price is not None:
            served.price = Price(price.input, price.output)
        models.append(served)
    return ModelCatalog(models)
