"""What the benchmark scripts share about the servers they run: a free port, a server started
and waited for, then stopped (SIGTERM, then SIGKILL after 30 s), and its /proc memory fields.
A sibling module: the scripts import it by name (they run as scripts from benchmarks/)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(name: str, cmd: list[str], url: str, log: Path, timeout_s: float = 600, env: dict[str, str] | None = None):
    """The server of `cmd` (with `env` added to the environment), its output in `log`, until the
    block ends: yields its pid once `url`/v1/models answers (a script that execs the server
    keeps the pid)."""
    print(f"starting {name}: {shlex.join(cmd)}", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit(f"{name} not ready after {timeout_s:.0f} s; see {log}")
            time.sleep(1)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile...), in bytes; empty
    when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of the process, in MiB."""
    peak = proc_status(pid).get("VmHWM")
    return None if peak is None else peak / (1 << 20)


def anon_mappings(pid: int) -> list[tuple[int, int]]:
    """(size, resident) in bytes of each anonymous mapping of the process (/proc/PID/smaps)."""
    out, size, anon = [], 0, False
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header: address range, perms, ...
            anon = len(fields) < 6  # no path: anonymous
        elif fields[0] == "Size:":
            size = int(fields[1]) * 1024
        elif fields[0] == "Rss:" and anon:
            out.append((size, int(fields[1]) * 1024))
    return out
