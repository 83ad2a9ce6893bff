"""schemathesis against /openapi.json: generated and schema-violating requests never get a server
error, and what the server answers conforms to what it documents. A bounded run.

The server here has a 64-token context so that generated requests finish quickly, and tight
request bounds behind the production HTTP protocol (api/limits.py, api/server.py), so generated
bodies reach the refusals too: each must be a documented status in its dialect's envelope. Two checks
are left out on purpose: `positive_data_acceptance` (a schema-valid request may still be refused
for what no schema can say: a prompt longer than the context, an unknown model), and the
response-time limit (a generation's duration is the model's, not the API's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatforge.api.app import create_app
from chatforge.api.server import bounded_headers_protocol
from chatforge.service.loading import load_catalog
from chatforge.settings import load_settings

from .conftest import LiveServer


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    settings = load_settings(engine={"threads": 1, "max_model_len": 64, "kv_cache_mb": 64, "max_num_seqs": 8},
                             database_url=f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'chatforge.db'}",
                             limits={"max_body_bytes": 16384, "max_json_depth": 8, "max_messages": 6,
                                     "max_prompt_chars": 400, "request_timeout_s": 30})
    catalog = load_catalog(settings)
    protocol = bounded_headers_protocol(10.0, 16384, None)
    try:
        with LiveServer(create_app(settings, catalog), http=protocol) as live:
            yield live
    finally:
        for m in catalog.models:
            m.engine.shutdown(0)


def test_schemathesis_finds_no_server_error(small_server, tmp_path):
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st), "run", small_server.url + "/openapi.json",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance",
        "--max-response-time", "600",
        "--max-examples", os.environ.get("CHATFORGE_FUZZ_EXAMPLES", "15"),
        "--seed", "1",
        "--workers", "1",
        "--request-timeout", "60",
        "--no-color",
        "--output-sanitize", "false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout or "passed" in proc.stdout.lower()
