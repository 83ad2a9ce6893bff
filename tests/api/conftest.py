"""A real chatforge server for the API tests: the bundled model on a real uvicorn, on a free
loopback port, in a background thread; loaded once per session."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from chatforge.api.app import create_app
from chatforge.settings import load_settings

from .openai_conformance import RECORDER, Conformance

PRICE_IN, PRICE_OUT = 0.5, 1.5  # USD per million tokens, to check estimated_cost


@pytest.fixture(scope="session")
def api_settings(tmp_path_factory):
    # The platform's database lives in a temporary folder, never in the working directory.
    return load_settings(
        database_url=f"sqlite:///{tmp_path_factory.mktemp('platform') / 'chatforge.db'}",
        prices={"smollm2": {"input": PRICE_IN, "output": PRICE_OUT}},
        engine={"threads": 1, "max_num_seqs": 32, "kv_cache_mb": 384, "max_waiting": 64},
    )


@pytest.fixture(scope="session")
def catalog(api_settings):
    from chatforge.service.loading import load_catalog

    cat = load_catalog(api_settings)
    yield cat
    for m in cat.models:
        m.engine.shutdown(0)


@pytest.fixture(autouse=True)
def openai_conformance():
    """Fails a test whose requests got an OpenAI-format object that OpenAI's published schema
    refuses (the test servers validate every one they send: openai_conformance.py)."""
    RECORDER.take()
    yield
    found = RECORDER.take()
    assert not found, "objects that break OpenAI's schema:\n" + "\n".join(found[:20])


class LiveServer:
    """`app` behind a real uvicorn; every OpenAI-format object it sends is checked against
    OpenAI's schema on the way out."""

    def __init__(self, app, **config):
        """`config`: more uvicorn.Config arguments (a protocol class, timeouts)."""
        app = Conformance(app)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def call(self, coroutine, timeout: float = 120):
        """Run `coroutine` on the server's event loop (from the test's thread); its result."""
        loop = self.server.servers[0].get_loop()
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


@pytest.fixture(scope="session")
def server(api_settings, catalog):
    with LiveServer(create_app(api_settings, catalog)) as live:
        yield live


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
