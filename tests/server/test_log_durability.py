"""Every acknowledged write survives kill -9 of the server under mixed load, on SQLite and PostgreSQL.

Acknowledged: a 2xx answer, or a stream that ended with `data: [DONE]`. The load mixes logged chat completions
(streamed and not), `/report` and dataset entries; many more are in flight when the server is killed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database, start_server, stop_server
from tests.store.load import (
    Acked,
    Stored,
    create_dataset,
    load,
    missing_or_twice,
    stored_in_postgresql,
    stored_in_sqlite,
)

CONCURRENCY = 16
KILL_AFTER = 45  # acknowledged writes before the kill


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the default: pipeserve.db in the data directory
        return
    url = asyncio.run(create_pg_database())
    yield url
    asyncio.run(drop_pg_database(url))


def test_every_acknowledged_write_survives_a_sigkill(tmp_path: Path, database_url: str | None) -> None:
    args = ("--database-url", database_url) if database_url else ()
    server = start_server(tmp_path, extra_args=args)
    try:
        dataset = create_dataset(server)

        def kill_when_enough(acked: Acked) -> None:
            if acked.total >= KILL_AFTER and server.process.poll() is None:
                server.process.send_signal(signal.SIGKILL)

        acked = asyncio.run(
            load(server, count=10_000, concurrency=CONCURRENCY, dataset=dataset, after_each=kill_when_enough)
        )
        server.process.wait(timeout=30)
    finally:
        if server.process.poll() is None:
            stop_server(server)
    assert server.process.returncode == -signal.SIGKILL
    assert acked.total >= KILL_AFTER and acked.logs and acked.entries

    stored: Stored
    if database_url:
        stored = asyncio.run(stored_in_postgresql(database_url))
    else:
        stored = stored_in_sqlite(server.data_dir / "pipeserve.db")  # and its integrity_check passes
    for what, runs, found in [("logs", acked.logs, stored.logs), ("dataset entries", acked.entries, stored.entries)]:
        missing, twice = missing_or_twice(runs, found)
        assert missing == [], f"{len(missing)} of {len(runs)} acknowledged {what} are not in the store"
        assert twice == [], f"{len(twice)} acknowledged {what} are in the store twice"

    restarted = start_server(tmp_path, extra_args=args)  # and the store opens again after the crash
    try:
        assert restarted.health()["status"] == "ok"
    finally:
        stop_server(restarted)
