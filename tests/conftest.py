"""Fixtures: the real server (`python -m pipeserve serve`) on a free port with the embedded model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"
# Every server of the run shares one weights directory: the weight format is measured and converted once
# (`pytest_sessionstart`), not at each server's start in a fresh data directory.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "build" / "weights"


def pytest_sessionstart(session: pytest.Session) -> None:
    from pipeserve.engines.llamacpp.options import embedded_gguf_path
    from pipeserve.engines.llamacpp.weights import choose

    choose(embedded_gguf_path(), WEIGHTS_DIR, threads=os.cpu_count() or 1, progress=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def client(self, api_key: str = "anything") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=api_key, max_retries=0, timeout=120)

    def async_client(self, api_key: str = "anything") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=api_key, max_retries=0, timeout=120)

    def health(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(f"{self.url}/health", timeout=10).json()  # type: ignore[no-any-return]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPESERVE_", "OPENAI_"))}
    env["PIPESERVE_WEIGHTS_DIR"] = str(WEIGHTS_DIR)
    return env


def start_server(tmp: Path, *, config: str | None = None, extra_args: tuple[str, ...] = ()) -> Server:
    port = free_port()
    data_dir = tmp / "data"
    args = [sys.executable, "-m", "pipeserve", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if config is not None:
        (tmp / "pipeserve.toml").write_text(config)
        args += ["--config", str(tmp / "pipeserve.toml")]
    log = tmp / "server.log"
    process = subprocess.Popen([*args, *extra_args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=clean_env())
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def create_key(data_dir: Path, project: str = "default", name: str = "test") -> str:
    """`pipeserve keys create` for a server's data directory; the key, as printed once."""
    command = ["keys", "create", "--name", name, "--project", project, "--data-dir", str(data_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "pipeserve", *command],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    return result.stdout.strip()


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return server.client()


# --- the store: a SQLite file and a fresh PostgreSQL database, one each per session -------------------------

PG_HOST = os.environ.get("PIPESERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _pg_admin_url() -> str:
    return f"{PG_HOST}/test"


async def create_pg_database() -> str:
    """A new, empty database on the test PostgreSQL server; its plain URL."""
    import uuid

    import asyncpg

    name = f"pipeserve_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_pg_admin_url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{PG_HOST}/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(_pg_admin_url())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An open, migrated `Database`, on SQLite and on PostgreSQL. Tests isolate themselves by project."""
    from pipeserve.settings import Settings
    from pipeserve.store.db import open_database

    if request.param == "sqlite":
        plain = f"sqlite:///{tmp_path_factory.mktemp('store') / 'pipeserve.db'}"
    else:
        plain = await create_pg_database()
    db = await open_database(Settings(database_url=plain).store_url)
    yield db
    await db.close()
    if request.param == "postgresql":
        await drop_pg_database(plain)


@pytest.fixture
def project() -> str:
    """A project no other test uses: isolation inside the shared test databases."""
    import uuid

    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on a fresh PostgreSQL database."""
    import asyncio

    url = asyncio.run(create_pg_database())
    srv = start_server(tmp_path_factory.mktemp("pg-server"), extra_args=("--database-url", url))
    yield srv
    stop_server(srv)
    asyncio.run(drop_pg_database(url))
