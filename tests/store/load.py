"""Mixed write load against a real server (logged chat completions, `/report`, dataset entries), which writes
were acknowledged, and what the store holds afterwards: for the kill -9 and store outage tests."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MODEL, Server

KINDS = ("chat", "report", "entry")
USER = {"role": "user", "content": "Say hi"}
ANSWER = {"role": "assistant", "content": "hi"}


@dataclass
class Acked:
    """The writes a client was told are done: a 2xx answer, or a stream that ended with `data: [DONE]`."""

    logs: list[str] = field(default_factory=list)  # run ids of chat completions and reports
    entries: list[str] = field(default_factory=list)  # run ids of dataset entries
    seconds: list[float] = field(default_factory=list)  # how long each acknowledged write took
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return len(self.logs) + len(self.entries)


@dataclass
class Stored:
    logs: Counter[str]  # run id -> rows
    entries: Counter[str]


async def write_one(
    client: httpx.AsyncClient, server: Server, kind: str, index: int, dataset: str, acked: Acked
) -> None:
    run = uuid.uuid4().hex
    started = time.monotonic()
    if kind == "chat":
        stream = index % 2 == 0
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Count to {index}"}],
            "max_tokens": 4,
            "metadata": {"run": run},
            "stream": stream,
        }
        async with client.stream("POST", f"{server.v1}/chat/completions", json=body) as response:
            text = b"".join([chunk async for chunk in response.aiter_bytes()])
        done = response.status_code == 200 and (not stream or text.endswith(b"data: [DONE]\n\n"))
    elif kind == "report":
        report = {
            "reqPayload": {"model": "ext", "messages": [USER], "metadata": {"run": run}},
            "respPayload": {"id": run, "choices": [{"index": 0, "message": ANSWER}], "n": index},
            "statusCode": 200,
        }
        response = await client.post(f"{server.v1}/report", json=report)
        done = response.status_code == 200
    else:
        entries = {"entries": [{"messages": [USER, ANSWER], "metadata": {"run": run}}]}
        response = await client.post(f"{server.v1}/datasets/{dataset}/entries", json=entries)
        done = response.status_code == 200 and response.json()["entries_created"] == 1
    acked.statuses[response.status_code] += 1
    if done:
        (acked.entries if kind == "entry" else acked.logs).append(run)
        acked.seconds.append(time.monotonic() - started)


async def load(
    server: Server,
    *,
    count: int,
    concurrency: int,
    dataset: str = "",
    kinds: tuple[str, ...] = KINDS,
    acked: Acked | None = None,
    after_each: Callable[[Acked], None] = lambda _: None,
) -> Acked:
    """`count` writes, `concurrency` at a time, cycling through `kinds`; stops early once the server is gone."""
    acked = acked if acked is not None else Acked()
    queue = iter(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        for index in queue:
            try:
                await write_one(client, server, kinds[index % len(kinds)], index, dataset, acked)
            except httpx.HTTPError:
                return  # the server is gone
            after_each(acked)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return acked


def create_dataset(server: Server) -> str:
    response = httpx.post(f"{server.v1}/datasets", json={"name": f"load-{uuid.uuid4().hex[:8]}"}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def stored_in_sqlite(path: Path) -> Stored:
    conn = sqlite3.connect(path)  # reading recovers the WAL as a restarted server would
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logs = conn.execute("SELECT json_extract(meta, '$.run') FROM logs")
        entries = conn.execute("SELECT json_extract(meta, '$.run') FROM dataset_entries")
        return Stored(Counter(run for (run,) in logs), Counter(run for (run,) in entries))
    finally:
        conn.close()


async def stored_in_postgresql(url: str) -> Stored:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        logs = await conn.fetch("SELECT meta->>'run' AS run FROM logs")
        entries = await conn.fetch("SELECT meta->>'run' AS run FROM dataset_entries")
        return Stored(Counter(row["run"] for row in logs), Counter(row["run"] for row in entries))
    finally:
        await conn.close()


def missing_or_twice(acked: list[str], stored: Counter[str]) -> tuple[list[str], list[str]]:
    return [run for run in acked if stored[run] == 0], [run for run in acked if stored[run] > 1]
