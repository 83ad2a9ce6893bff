"""service/loading.py: models load on a thread that ends before load_catalog returns (engine
threads then keep OpenMP's workers spinning; see load_catalog), a failure there reaches the
caller, and `chatforge serve` states it in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from chatforge.models.source import ModelNotFoundError
from chatforge.service.loading import load_catalog
from chatforge.settings import Settings, load_settings


@pytest.fixture(scope="module")
def catalog():
    cat = load_catalog(load_settings(engine={"threads": 1, "max_model_len": 64, "kv_cache_mb": 16},
                                     prices={"smollm2": {"input": 0.5, "output": 1.5}}))
    yield cat
    for m in cat.models:
        m.engine.shutdown(0)


def test_the_loader_thread_is_gone_and_the_engine_runs(catalog):
    # `catalog` was built by load_catalog on this very thread.
    names = [t.name for t in threading.enumerate()]
    assert "chatforge-loader" not in names
    engine = catalog.models[0].engine
    assert engine.is_running and engine.thread is not threading.current_thread()
    # the configured price reached the model by its alias; the engine config as given
    model = catalog.models[0]
    assert (model.price.input, model.price.output, model.context_length) == (0.5, 1.5, 64)


def test_a_loading_error_is_raised_in_the_caller(tmp_path):
    settings = Settings(models=[str(tmp_path / "no-such-model.gguf")])
    with pytest.raises(ModelNotFoundError):
        load_catalog(settings)
    assert "chatforge-loader" not in [t.name for t in threading.enumerate()]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--model", "/no/such/model"], {}, "error: no model at /no/such/model"),
    ],
)
def test_serve_states_a_start_up_error_in_one_line(tmp_path, args, env, message):
    """A wrong model path: exit 1 and one line on stderr, not a traceback. (Where the native
    kernels cannot be built, the server computes with torch instead: tests/models/test_native_model.py.)"""
    proc = subprocess.run(
        [sys.executable, "-m", "chatforge.cli", "serve", "--port", "1", "--database-url", f"sqlite:///{tmp_path / 'db'}", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "CHATFORGE_ENGINE__KERNEL_CACHE_DIR": str(tmp_path / "cache"), **env},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
