"""Servers for the bench tests: a scripted OpenAI-compatible streaming server (known delays,
known token counts, every request body kept) on a real uvicorn, and live chatforge."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from .fake_server import FakeBehaviour, fake_openai_app


@contextmanager
def serve_in_thread(app):
    """`app` on a real uvicorn on a free loopback port, in a daemon thread; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def fake_server():
    """A factory: `fake_server(FakeBehaviour(...))` -> (url, app); servers stop after the test."""
    with_stack = []

    def start(behaviour: FakeBehaviour | None = None):
        app = fake_openai_app(behaviour or FakeBehaviour())
        ctx = serve_in_thread(app)
        url = ctx.__enter__()
        with_stack.append(ctx)
        return url, app

    yield start
    for ctx in reversed(with_stack):
        ctx.__exit__(None, None, None)
