"""The real server while its PostgreSQL store goes away and comes back, under load: completions keep answering,
their logs wait (in memory, then in the spill file) and are all written, once, without a restart; the data API
answers 503 meanwhile. The database is taken away from this server only, through a TCP proxy."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Server, create_pg_database, drop_pg_database, start_server, stop_server
from tests.store.load import Acked, create_dataset, load, missing_or_twice, stored_in_postgresql
from tests.store.tcp_proxy import TcpProxy

ERROR_KEYS = {"message", "type", "param", "code"}
# Seconds: far above a 4-token answer even on a busy 2-CPU machine, far below a request stuck on the store (it
# would wait for the client's timeout, and not be counted as answered).
PROMPT = 30.0
WAIT = 60.0


@pytest.fixture
def proxied_database() -> Iterator[tuple[TcpProxy, str]]:
    """A fresh PostgreSQL database, and a proxy in front of it; the database's direct URL."""
    proxy = TcpProxy().start()
    url = asyncio.run(create_pg_database())
    yield proxy, url
    proxy.stop()
    asyncio.run(drop_pg_database(url))


def start(tmp_path: Path, proxy: TcpProxy, url: str, **settings: object) -> Server:
    lines = [f'database_url = "{proxy.url(url.rsplit("/", 1)[1])}"', "store_timeout_seconds = 1.0"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return start_server(tmp_path, config="\n".join(lines) + "\n")


def metrics(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("pipeserve_store_up", "pipeserve_log_backlog_rows", "pipeserve_log_dropped_rows_total")):
            name, value = line.split()
            out[name] = float(value)
    return out


def wait_for_backlog(server: Server) -> dict[str, float]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        seen = metrics(server)
        if seen["pipeserve_log_backlog_rows"] == 0 and seen["pipeserve_store_up"] == 1:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the held logs were not written within {WAIT}s: {metrics(server)}")


def assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == "store_unavailable" and error["type"] == "server_error"
    assert response.headers["retry-after"].isdigit()


def assert_all_answered_promptly(acked: Acked, count: int) -> None:
    assert acked.total == count, f"only {acked.total} of {count} writes were answered: {acked.statuses}"
    assert max(acked.seconds) < PROMPT, f"a request waited {max(acked.seconds):.1f}s on a store that is away"


def test_completions_go_on_while_the_store_is_away_and_every_log_arrives_once(
    tmp_path: Path, proxied_database: tuple[TcpProxy, str]
) -> None:
    proxy, url = proxied_database
    server = start(tmp_path, proxy, url, log_buffer_rows=20)
    try:
        dataset = create_dataset(server)
        acked = asyncio.run(load(server, count=12, concurrency=6, dataset=dataset))
        assert acked.total == 12

        proxy.refuse()  # connections refused, open ones reset
        away = asyncio.run(load(server, count=40, concurrency=8, kinds=("chat", "report")))
        assert_all_answered_promptly(away, 40)
        seen = metrics(server)
        assert seen["pipeserve_store_up"] == 0 and seen["pipeserve_log_backlog_rows"] == 40
        assert seen["pipeserve_log_dropped_rows_total"] == 0
        assert (server.data_dir / "log-spill.jsonl").stat().st_size > 0  # beyond 20 rows, on disk

        health = server.health()
        assert health["status"] == "degraded" and health["store"]["available"] is False
        assert health["store"]["log_backlog"] == 40 and health["store"]["logs_dropped"] == 0
        with httpx.Client(base_url=server.v1, timeout=30) as http:
            # the response cache lives in the store: a read is a miss, and the model answers
            cached = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            headers = {"op-cache": "readWrite", "op-log-request": "false"}
            answer = http.post("/chat/completions", json=cached, headers=headers)
            assert answer.status_code == 200, answer.text
            assert_503(http.get("/logs"))
            assert_503(http.get(f"/logs/log_{'0' * 32}"))
            assert_503(http.post("/logs/update-metadata", json={"filters": [], "metadata": {"a": "b"}}))
            assert_503(http.get("/datasets"))
            entries = {"entries": [{"messages": [{"role": "user", "content": "x"}]}]}
            assert_503(http.post(f"/datasets/{dataset}/entries", json=entries))
            assert_503(http.get("/criteria"))
            assert_503(http.get("/local-testing-only-get-latest-logged-call"))

        proxy.hang()  # connections accepted and never answered: nobody may wait longer than the timeout
        hung = asyncio.run(load(server, count=16, concurrency=8, kinds=("chat", "report"), acked=away))
        assert_all_answered_promptly(hung, 56)
        with httpx.Client(base_url=server.v1, timeout=30) as http:
            assert_503(http.get("/logs"))

        proxy.forward()  # back, without a restart
        wait_for_backlog(server)
        assert server.health()["status"] == "ok"
        stored = asyncio.run(stored_in_postgresql(url))
        missing, twice = missing_or_twice(acked.logs + away.logs, stored.logs)
        assert missing == [] and twice == []
        assert sum(stored.logs.values()) == len(acked.logs) + len(away.logs)
        assert httpx.get(f"{server.v1}/logs", timeout=30).status_code == 200
        assert asyncio.run(load(server, count=6, concurrency=3, dataset=dataset)).total == 6
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("stop", "buffer_rows"),
    [("SIGTERM", 1000), ("SIGKILL", 0)],  # SIGTERM spills what memory holds; kill -9 keeps what was spilled
)
def test_spilled_logs_are_written_after_a_restart(
    tmp_path: Path, proxied_database: tuple[TcpProxy, str], stop: str, buffer_rows: int
) -> None:
    proxy, url = proxied_database
    server = start(tmp_path, proxy, url, log_buffer_rows=buffer_rows)
    spill = server.data_dir / "log-spill.jsonl"
    try:
        proxy.refuse()
        acked = asyncio.run(load(server, count=20, concurrency=4, kinds=("chat", "report")))
        assert acked.total == 20
        if stop == "SIGKILL":
            assert len(spill.read_bytes().splitlines()) == 20
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=30)
        else:
            stop_server(server)
            assert server.process.returncode in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal
            assert len(spill.read_bytes().splitlines()) == 20
    finally:
        if server.process.poll() is None:
            stop_server(server)

    proxy.forward()
    restarted = start(tmp_path, proxy, url)
    try:
        wait_for_backlog(restarted)
        stored = asyncio.run(stored_in_postgresql(url))
        missing, twice = missing_or_twice(acked.logs, stored.logs)
        assert missing == [] and twice == []
        assert spill.stat().st_size == 0
    finally:
        stop_server(restarted)
