"""A PostgreSQL and a Redis that a test may stop and start again on the same port (the session's
shared servers must stay up for everyone else): real servers from the installed binaries, in a
temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from .platform_fixtures import _servers, free_port


class RestartablePostgres:
    def __init__(self) -> None:
        self.bin = _servers._postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="chatforge-pg-faults-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data, self.port = self.folder / "data", free_port()
        _servers._as_postgres_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", "chatforge",
                                    "--auth=trust", "-E", "UTF8", "--no-sync"])
        self.start()
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")

    @property
    def url(self) -> str:
        return f"postgresql://chatforge@127.0.0.1:{self.port}/faults"

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=chatforge dbname={database}"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        _servers._as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                                    "-l", str(self.folder / "pg.log"), "-w", "start"])

    def stop(self) -> None:
        """Like an operator's restart: running sessions are ended, new connections refused."""
        _servers._as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def close(self) -> None:
        try:
            _servers._as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


class RestartableRedis:
    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server not found: apt-get install -y redis-server"
        self.folder, self.port = tempfile.mkdtemp(prefix="chatforge-redis-faults-"), free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline and self.process.poll() is None, "redis-server did not start"
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
