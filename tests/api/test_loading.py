"""service/loading.py: models load on a thread that ends before load_catalog returns (engine
threads then keep OpenMP's workers spinning; see load_catalog), and a failure there reaches the
caller."""

from __future__ import annotations

import threading

import pytest

from chatforge.models.source import ModelNotFoundError
from chatforge.service.loading import load_catalog
from chatforge.settings import Settings


def test_the_loader_thread_is_gone_and_the_engine_runs(catalog):
    # `catalog` (conftest) was built by load_catalog on this very thread.
    names = [t.name for t in threading.enumerate()]
    assert "chatforge-loader" not in names
    engine = catalog.models[0].engine
    assert engine.is_running and engine.thread is not threading.current_thread()


def test_a_loading_error_is_raised_in_the_caller(tmp_path):
    settings = Settings(models=[str(tmp_path / "no-such-model.gguf")])
    with pytest.raises(ModelNotFoundError):
        load_catalog(settings)
    assert "chatforge-loader" not in [t.name for t in threading.enumerate()]
