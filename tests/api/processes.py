"""Real `chatforge serve` processes for the tests that need one (signals, process memory): the
bundled model, a small engine, one engine thread, a log file, a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .platform_fixtures import free_port

START_TIMEOUT_S = 240  # a model load on a busy 2-core machine


@dataclass
class ServeProcess:
    process: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text()


def start_serve(folder: Path, database_url: str, env: dict[str, str] | None = None, *extra: str) -> ServeProcess:
    """`chatforge serve` in `folder`, healthy; `env`: CHATFORGE_* settings on top of a small engine."""
    port, log = free_port(), folder / "serve.log"
    environment = {**os.environ, "CHATFORGE_ENGINE__KV_CACHE_MB": "64", "CHATFORGE_ENGINE__MAX_NUM_SEQS": "8",
                   "CHATFORGE_LOG_LEVEL": "info", **(env or {})}
    command = [sys.executable, "-m", "chatforge.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--database-url", database_url, "--threads", "1", *extra]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=environment)
    served = ServeProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"chatforge serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(served.url + "/health", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    served.stop()
    pytest.fail(f"chatforge serve did not become healthy in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
