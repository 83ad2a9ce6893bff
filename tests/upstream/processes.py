"""Real `chatforge serve` processes for the fleet tests: each on a fixed loopback port (so a killed
node can come back where the gateways expect it), with its own log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 300  # model loads side by side on a busy 2-core machine


class ServeProcess:
    def __init__(self, name: str, port: int, args: list[str], folder: Path, env: dict[str, str] | None = None):
        self.name, self.port, self.args, self.folder = name, port, args, folder
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.log = folder / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> ServeProcess:
        self.runs += 1
        command = [sys.executable, "-m", "chatforge.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        with self.log.open("a") as out:
            out.write(f"--- start {self.runs}\n")
            out.flush()
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, env=self.env)
        return self

    def wait_healthy(self, path: str = "/health") -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"{self.name} was not healthy after {START_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a machine lost)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text()
