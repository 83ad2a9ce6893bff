"""The connection-level bounds (api/server.py) and the cross-cutting bits (api/app.py): a request
head that arrives too slowly is 408, one too large 431, an idle keep-alive connection is closed;
CORS is off unless configured; every response carries a request id, and the request's log lines
carry the same one."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest

from chatforge.api.app import create_app
from chatforge.api.server import bounded_headers_protocol
from chatforge.logs import RequestIdFilter

from .conftest import LiveServer

HEAD_TIMEOUT_S, MAX_HEAD, KEEP_ALIVE_S = 0.5, 4096, 1


@pytest.fixture(scope="module")
def bounded(api_settings, catalog, tmp_path_factory):
    settings = api_settings.model_copy(update={
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('bounds') / 'c.db'}",
        "server": api_settings.server.model_copy(update={"cors_allow_origins": ["https://app.example"]}),
    })
    protocol = bounded_headers_protocol(HEAD_TIMEOUT_S, MAX_HEAD, None)
    with LiveServer(create_app(settings, catalog), http=protocol, timeout_keep_alive=KEEP_ALIVE_S) as live:
        yield live


def _connect(live) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_head_that_arrives_too_slowly_is_408(bounded):
    with _connect(bounded) as sock:
        connected = time.monotonic()  # the deadline runs from the connection
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n")  # ... and no more
        answer = _read_all(sock)  # the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert HEAD_TIMEOUT_S * 0.9 <= time.monotonic() - connected < 10


def test_a_head_too_large_is_431(bounded):
    with _connect(bounded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\nx-padding: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_an_idle_keep_alive_connection_is_closed(bounded):
    with _connect(bounded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert _read_all(sock) == b""  # closed by the server, after its keep-alive timeout
    assert KEEP_ALIVE_S * 0.9 <= time.monotonic() - started < 10


def test_requests_within_the_bounds_are_served(bounded):
    with httpx.Client(base_url=bounded.url, timeout=120) as http:
        response = http.post("/v1/chat/completions", json={"model": "smollm2", "max_tokens": 1,
                                                           "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text


def test_cors_is_off_by_default(http):
    preflight = http.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in http.get("/health", headers={"Origin": "https://app.example"}).headers


def test_cors_allows_the_configured_origins(bounded):
    with httpx.Client(base_url=bounded.url, timeout=120) as http:
        preflight = http.options("/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = http.options("/v1/chat/completions", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        answer = http.get("/health", headers={"Origin": "https://app.example"})
        assert "x-request-id" in answer.headers["access-control-expose-headers"]


def test_every_response_and_its_log_lines_carry_the_request_id(http, caplog):
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="chatforge.api.requests"):
        answered = http.post("/v1/chat/completions", json={"model": "smollm2", "max_tokens": 1,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        refused = http.post("/v1/chat/completions", json={"model": "no-such-model", "max_tokens": 1,
                                                          "messages": [{"role": "user", "content": "hi"}]})
        invalid = http.post("/v1/chat/completions", json={"model": "smollm2"})
    assert answered.headers["x-request-id"].startswith("chatcmpl-")
    assert refused.status_code == 404 and refused.headers["x-request-id"].startswith("chatcmpl-")
    assert invalid.status_code == 400 and invalid.headers["x-request-id"].startswith("req-")  # refused before it had its own
    assert http.get("/health").headers["x-request-id"].startswith("req-")
    lines = [r for r in caplog.records if answered.headers["x-request-id"] in r.getMessage()]
    assert lines and all(r.request_id == answered.headers["x-request-id"] for r in lines)
    assert "hi" not in [w.strip(",.") for r in caplog.records for w in r.getMessage().split()]  # no prompt text
