"""Real servers for the platform tests: one PostgreSQL and one Redis per test session, started
from the installed binaries on free loopback ports in temporary folders, and stopped after.

A missing binary fails the session with the command that installs it: the platform's promise is
to work on PostgreSQL and Redis, so a skipped test would hide exactly what must be checked.

NOTE: this folder has no __init__.py on purpose: as a package it would be imported as
`platform` and shadow the standard library module of that name.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade

INSTALL = "apt-get install -y postgresql redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent  # a link; pg_dump lies beside its target
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail(f"PostgreSQL server binaries not found (pg_ctl): {INSTALL}", pytrace=False)
    return found[-1].parent


def _as_postgres_user(command: list[str]) -> None:
    """PostgreSQL refuses to run as root: go through the postgres user when we are root."""
    if os.geteuid() == 0:
        command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
    subprocess.run(command, check=True, capture_output=True)


@dataclass(frozen=True)
class PostgresServer:
    port: int
    bin: Path
    user: str = "chatforge"
    shared_database: str = "shared"  # holds one schema per test
    _names = itertools.count()

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _execute(self, database: str, statement: str) -> None:
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}",
                             autocommit=True) as conn:
            conn.execute(statement)

    def _name(self) -> str:
        return f"t{next(self._names)}_{uuid.uuid4().hex[:8]}"

    def create_database(self) -> str:
        """A new empty database's URL (~0.6 s: PostgreSQL copies a template database)."""
        name = self._name()
        self._execute("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_schema(self) -> str:
        """The URL of a new empty schema, made the connections' search_path (~5 ms)."""
        name = self._name()
        self._execute(self.shared_database, f'CREATE SCHEMA "{name}"')
        return f"{self.url(self.shared_database)}?options=-csearch_path%3D{name}"


@pytest.fixture(scope="session")
def postgres_server():
    pg_bin = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="chatforge-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off")
    _as_postgres_user([str(pg_bin / "initdb"), "-D", str(data), "-U", "chatforge", "--auth=trust",
                       "-E", "UTF8", "--no-sync"])
    _as_postgres_user([str(pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"),
                       "-w", "start"])
    server = PostgresServer(port=port, bin=pg_bin)
    server._execute("postgres", f"CREATE DATABASE {server.shared_database}")
    try:
        yield server
    finally:
        _as_postgres_user([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"redis-server not found: {INSTALL}", pytrace=False)
    folder, port = tempfile.mkdtemp(prefix="chatforge-redis-"), free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}", pytrace=False)
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def unreachable_redis_url() -> str:
    """A Redis URL on a loopback port where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database of each kind, not yet migrated (on PostgreSQL, a fresh schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chatforge.db'}"
    return request.getfixturevalue("postgres_server").create_schema()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path):
    """A brand-new database of each kind: a new file, a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'new.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
async def engine(database_url):
    """A migrated database's async engine."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()
