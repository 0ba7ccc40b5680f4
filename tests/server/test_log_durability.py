"""A request that got its whole answer is in the log, even if the server is killed (SIGKILL) right after."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from pathlib import Path

import httpx

from tests.conftest import MODEL, Server, start_server, stop_server

CONCURRENCY = 16
KILL_AFTER = 40  # complete answers before the kill; many more are in flight at that moment


async def _one(client: httpx.AsyncClient, server: Server, index: int, done: list[str]) -> None:
    run = uuid.uuid4().hex
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Count to {index}"}],
        "max_tokens": 4,
        "metadata": {"run": run},
        "stream": index % 2 == 0,
    }
    async with client.stream("POST", f"{server.v1}/chat/completions", json=body) as response:
        text = b"".join([chunk async for chunk in response.aiter_bytes()])
    complete = response.status_code == 200 and (not body["stream"] or text.endswith(b"data: [DONE]\n\n"))
    if complete:
        done.append(run)


async def _load_then_kill(server: Server) -> list[str]:
    done: list[str] = []
    queue = iter(range(10_000))

    async def worker(client: httpx.AsyncClient) -> None:
        for index in queue:
            try:
                await _one(client, server, index, done)
            except httpx.HTTPError:
                return  # the server is gone
            if len(done) >= KILL_AFTER and server.process.poll() is None:
                server.process.send_signal(signal.SIGKILL)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return done


def test_every_complete_answer_survives_a_sigkill(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        done = asyncio.run(_load_then_kill(server))
        server.process.wait(timeout=30)
    finally:
        if server.process.poll() is None:
            stop_server(server)
    assert server.process.returncode == -signal.SIGKILL
    assert len(done) >= KILL_AFTER

    database = server.data_dir / "pipeserve.db"
    conn = sqlite3.connect(database)  # reading recovers the WAL as a restarted server would
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {row[0] for row in conn.execute("SELECT json_extract(meta, '$.run') FROM logs")}
    finally:
        conn.close()
    missing = [run for run in done if run not in logged]
    assert missing == [], f"{len(missing)} of {len(done)} answered requests are not in the log"

    restarted = start_server(tmp_path)  # and the store opens again after the crash
    try:
        assert restarted.health()["status"] == "ok"
    finally:
        stop_server(restarted)
