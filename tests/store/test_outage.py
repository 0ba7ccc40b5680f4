"""The log writer and the data API while the store is away: PostgreSQL behind a proxy that refuses or hangs,
SQLite with a full disk. Nothing accepted is lost or stored twice, and nothing waits on a store that is gone."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from pipeserve.errors import StoreUnavailableError
from pipeserve.service import logs as service
from pipeserve.settings import Settings
from pipeserve.store.db import Database, open_database
from pipeserve.store.logwriter import LogWriter
from pipeserve.store.spill import SpillFile
from pipeserve.store.tables import log_criteria, logs
from tests.conftest import create_pg_database, drop_pg_database
from tests.store.tcp_proxy import TcpProxy
from tests.store.test_db import log_row

WAIT = 30.0  # bounds every wait: a hang fails the test instead of stalling the suite


@pytest.fixture(scope="module")
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy().start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
async def pg(proxy: TcpProxy) -> AsyncIterator[Database]:
    """A fresh PostgreSQL database reached through `proxy`, with a short connect timeout."""
    plain = await create_pg_database()
    proxied = proxy.url(plain.rsplit("/", 1)[1])
    db = await open_database(Settings(database_url=proxied).store_url, timeout=1.0)
    yield db
    await db.close()
    await drop_pg_database(plain)


@pytest.fixture(autouse=True)
def forwarding(proxy: TcpProxy) -> Iterator[None]:
    proxy.forward()
    yield
    proxy.forward()


async def stored(db: Database, project: str) -> list[str]:
    async with db.connect() as conn:
        return list((await conn.execute(select(logs.c.id).where(logs.c.project == project))).scalars())


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.05)


def writer_for(db: Database, tmp_path: Path, **options: Any) -> LogWriter:
    writer = LogWriter(db, spill_path=tmp_path / "log-spill.jsonl", timeout=1.0, **options)
    writer.start()
    return writer


async def test_logs_wait_out_a_refused_database_and_are_stored_once(
    pg: Database, proxy: TcpProxy, project: str, tmp_path: Path
) -> None:
    writer = writer_for(pg, tmp_path, buffer_rows=10)
    try:
        before = [log_row(project) for _ in range(5)]
        await asyncio.gather(*(writer.write(row) for row in before))
        proxy.refuse()
        during = [log_row(project, judgements=[judgement()]) for _ in range(60)]
        async with asyncio.timeout(WAIT):  # nobody waits for a store that is gone
            await asyncio.gather(*(writer.write(row) for row in during))
        assert not writer.available
        assert writer.backlog == 60 and writer.dropped == 0
        assert (tmp_path / "log-spill.jsonl").stat().st_size > 0  # beyond buffer_rows, on disk
        with pytest.raises(StoreUnavailableError):
            await service.list_logs(pg, project, service.ListQuery(filter=service.LogFilter()))

        proxy.forward()
        await until(lambda: writer.backlog == 0)
        assert writer.available
        ids = await stored(pg, project)
        assert sorted(ids) == sorted(row["id"] for row in before + during)
        async with pg.connect() as conn:
            judged = (await conn.execute(select(func.count()).where(log_criteria.c.log_id.in_(ids)))).scalar_one()
        assert judged == 60
        assert (tmp_path / "log-spill.jsonl").stat().st_size == 0  # emptied once everything is in
    finally:
        await writer.close()


async def test_a_hung_database_holds_no_request_longer_than_the_timeout(
    pg: Database, proxy: TcpProxy, project: str, tmp_path: Path
) -> None:
    writer = writer_for(pg, tmp_path)
    try:
        await writer.write(log_row(project))
        proxy.hang()
        rows = [log_row(project) for _ in range(20)]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(writer.write(row) for row in rows))
        assert not writer.available and writer.backlog == 20
        # the data API as well: a 503 once the connect timeout passes, for many callers at once
        results = await asyncio.gather(
            *(service.get_log(pg, project, rows[0]["id"]) for _ in range(40)), return_exceptions=True
        )
        assert all(isinstance(result, StoreUnavailableError) for result in results), results
        proxy.forward()
        await until(lambda: writer.backlog == 0)
        assert len(await stored(pg, project)) == 21
        assert await service.get_log(pg, project, rows[0]["id"]) is not None  # the pool recovered
    finally:
        await writer.close()


async def test_beyond_the_buffer_and_the_spill_file_rows_are_dropped_and_counted(
    pg: Database, proxy: TcpProxy, project: str, tmp_path: Path
) -> None:
    writer = writer_for(pg, tmp_path, buffer_rows=5, spill_bytes=3000)
    try:
        proxy.refuse()
        for _ in range(100):
            await writer.write(log_row(project))
        assert writer.dropped > 0
        assert writer.backlog + writer.dropped == 100
        held = writer.backlog
        proxy.forward()
        await until(lambda: writer.backlog == 0)
        assert len(await stored(pg, project)) == held
    finally:
        await writer.close()


async def test_spilled_rows_are_written_after_a_restart_and_never_twice(
    pg: Database, proxy: TcpProxy, project: str, tmp_path: Path
) -> None:
    rows = [log_row(project, judgements=[judgement()]) for _ in range(30)]
    first = writer_for(pg, tmp_path, buffer_rows=0)
    proxy.refuse()
    for row in rows:
        await first.write(row)
    await first.close()  # as on SIGTERM, with the store still away
    spill = tmp_path / "log-spill.jsonl"
    assert len(spill.read_bytes().splitlines()) == 30
    proxy.forward()
    # One commit landed although its writer never heard back (a timeout after the server committed).
    async with pg.begin() as conn:
        await conn.execute(insert(logs), [{k: v for k, v in rows[0].items() if k != "judgements"}])
    with spill.open("ab") as file:
        file.write(b'{"id": "log_cut_sh')  # and the process died in the middle of a line

    second = writer_for(pg, tmp_path)
    try:
        assert second.dropped == 1  # the cut line, never acknowledged to anyone
        await until(lambda: second.backlog == 0)
        assert sorted(await stored(pg, project)) == sorted(row["id"] for row in rows)
        assert spill.stat().st_size == 0
    finally:
        await second.close()


async def test_a_spill_file_that_cannot_grow_keeps_the_buffer_and_counts_the_rest(
    pg: Database, proxy: TcpProxy, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(self: SpillFile, rows: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SpillFile, "append", no_space)
    writer = writer_for(pg, tmp_path, buffer_rows=5)
    try:
        proxy.refuse()
        rows = [log_row(project) for _ in range(20)]
        for row in rows:
            await writer.write(row)
        assert writer.dropped == 15 and writer.backlog == 5
        proxy.forward()
        await until(lambda: writer.backlog == 0)
        assert sorted(await stored(pg, project)) == sorted(row["id"] for row in rows[:5])  # the oldest stay
    finally:
        await writer.close()


async def test_a_held_row_the_store_refuses_is_dropped_and_counted_and_the_others_stored(
    pg: Database, proxy: TcpProxy, project: str, tmp_path: Path
) -> None:
    writer = writer_for(pg, tmp_path)
    try:
        proxy.refuse()
        good = [log_row(project) for _ in range(6)]
        bad = log_row(project, source="x" * 50)  # longer than its VARCHAR(20): PostgreSQL refuses it
        for row in [*good[:3], bad, *good[3:]]:
            await writer.write(row)
        proxy.forward()
        await until(lambda: writer.backlog == 0)
        assert writer.dropped == 1
        assert sorted(await stored(pg, project)) == sorted(row["id"] for row in good)
    finally:
        await writer.close()


async def test_closing_while_the_store_is_away_without_a_spill_file_counts_what_is_lost(
    pg: Database, proxy: TcpProxy, project: str
) -> None:
    writer = LogWriter(pg, timeout=1.0)
    writer.start()
    proxy.refuse()
    for _ in range(3):
        await writer.write(log_row(project))
    await writer.close()
    assert writer.dropped == 3 and writer.backlog == 0


async def test_a_second_process_does_not_share_the_spill_file(pg: Database, tmp_path: Path) -> None:
    first = writer_for(pg, tmp_path)
    second = writer_for(pg, tmp_path)  # same data directory: it keeps its held rows in memory instead
    try:
        assert first._spill is not None and second._spill is None
    finally:
        await second.close()
        await first.close()


async def test_a_database_that_cannot_be_connected_to_is_unavailable_not_an_error(proxy: TcpProxy) -> None:
    db = Database(Settings(database_url=proxy.url("pipeserve_no_such_database")).store_url, timeout=1.0)
    try:
        with pytest.raises(StoreUnavailableError) as raised:
            async with db.connect():
                pass
        assert raised.value.status_code == 503 and raised.value.headers["Retry-After"].isdigit()
    finally:
        await db.close()


# --- SQLite: a full disk ------------------------------------------------------------------------------------


@pytest.fixture
async def small_disk(tmp_path: Path) -> AsyncIterator[tuple[Database, Callable[[int | None], Any]]]:
    """A SQLite store, and a function that caps its file at the pages it has (None lifts the cap)."""
    path = tmp_path / "full.db"
    db = await open_database(f"sqlite+aiosqlite:///{path}")
    cap: list[int | None] = [None]

    def on_connect(dbapi_connection: Any, _: Any) -> None:
        if cap[0] is not None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA page_count")
            pages = cursor.fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count={pages + cap[0]}")
            cursor.close()

    db.on_connect(on_connect)

    async def limit(extra_pages: int | None) -> None:
        cap[0] = extra_pages
        await db.reconnect()  # every connection from now on has the cap (or none)

    yield db, limit
    await db.close()


async def test_a_full_sqlite_disk_holds_logs_until_there_is_room(
    small_disk: tuple[Database, Callable[[int | None], Any]], project: str, tmp_path: Path
) -> None:
    db, limit = small_disk
    writer = writer_for(db, tmp_path, buffer_rows=20)
    try:
        await limit(2)
        rows = [log_row(project, req_payload={"text": "x" * 3000}) for _ in range(200)]
        async with asyncio.timeout(WAIT):
            for row in rows:
                await writer.write(row)
        assert not writer.available and writer.dropped == 0
        assert writer.backlog > 0
        with pytest.raises(StoreUnavailableError):  # writes of the data API: a 503, not a 500
            await service.update_metadata(db, project, [], {"k": "v" * 20_000})
        assert (await service.list_logs(db, project, service.ListQuery(filter=service.LogFilter()))).data  # reads go on

        await limit(None)
        await until(lambda: writer.backlog == 0)
        assert sorted(await stored(db, project)) == sorted(row["id"] for row in rows)
    finally:
        await writer.close()
    async with db.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA integrity_check")).scalar_one() == "ok"


def judgement() -> dict[str, Any]:
    return {"choice_index": 0, "name": "c", "version": 1, "status": "success", "score": 1.0}
