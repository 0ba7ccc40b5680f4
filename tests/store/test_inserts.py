"""The fast ways in for log rows (SQLite's in-place connection, PostgreSQL's own asyncpg connection): what they
store is what the async engine would have stored, a batch is all or nothing, and a lost connection is
replaced."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import insert, select

from pipeserve.errors import StoreUnavailableError
from pipeserve.store.db import Database, is_refused, new_id, now_ms
from pipeserve.store.postgres_rows import PostgresRows
from pipeserve.store.tables import log_criteria, logs
from tests.conftest import create_pg_database, drop_pg_database, free_port


def full_row(project: str) -> dict[str, Any]:
    return {
        "id": new_id("log"),
        "project": project,
        "source": "chat",
        "completion_id": "chatcmpl-1",
        "model": "m",
        "requested_at": now_ms(),
        "received_at": now_ms(),
        "ttft_ms": 1.5,
        "duration_ms": 3,  # an integer into a float column
        "status_code": 200,
        "error_message": None,
        "req_payload": {"messages": [{"role": "user", "content": 'héllo \u2028 "quoted"'}], "n": 1.0},
        "resp_payload": orjson.Fragment(b'{"choices": [], "big": 12345678901234567890}'),
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cost": None,
        "cache_hit": True,
        "key_id": None,
        "meta": {"k": "v"},
        "tags": {},
    }


async def read(database: Database, log_id: str) -> dict[str, Any]:
    async with database.connect() as conn:
        row = (await conn.execute(select(logs).where(logs.c.id == log_id))).mappings().one()
    return {k: v for k, v in row.items() if k != "id"}


async def test_a_row_reads_back_as_the_engine_would_have_stored_it(database: Database, project: str) -> None:
    fast, slow = full_row(project), full_row(project)
    sparse_fast = {k: fast[k] for k in ("project", "source", "requested_at", "meta", "tags")} | {"id": new_id("log")}
    sparse_slow = sparse_fast | {"id": new_id("log")}
    sparse_fast["req_payload"] = sparse_slow["req_payload"] = None  # JSON null, not SQL NULL, on both ways
    await database.insert([(logs, [fast, sparse_fast], False)])
    async with database.begin() as conn:
        await conn.execute(insert(logs), [slow])
        await conn.execute(insert(logs), [sparse_slow])
    assert await read(database, fast["id"]) == await read(database, slow["id"])
    assert await read(database, sparse_fast["id"]) == await read(database, sparse_slow["id"])
    stored = await read(database, fast["id"])
    assert stored["cache_hit"] is True and stored["duration_ms"] == 3.0
    assert stored["resp_payload"]["big"] == 12345678901234567890


async def test_a_log_and_its_judgements_are_stored_together_or_not_at_all(database: Database, project: str) -> None:
    row = full_row(project)
    bad_judgement = {"log_id": row["id"], "choice_index": 0, "name": "c", "version": 1, "status": None}  # NOT NULL
    with pytest.raises(Exception) as caught:
        await database.insert([(logs, [row], False), (log_criteria, [bad_judgement], False)])
    assert is_refused(caught.value)  # the rows' own fault, which the log writer doesn't retry
    async with database.connect() as conn:
        assert (await conn.execute(select(logs.c.id).where(logs.c.id == row["id"]))).first() is None
    good = bad_judgement | {"status": "success", "score": 1.0}
    await database.insert([(logs, [row], False), (log_criteria, [good], False)])  # the way in still works
    async with database.connect() as conn:
        judged = (await conn.execute(select(log_criteria.c.score).where(log_criteria.c.log_id == row["id"]))).all()
    assert judged == [(1.0,)]


async def test_a_replayed_row_already_stored_is_skipped(database: Database, project: str) -> None:
    row = full_row(project)
    await database.insert([(logs, [row], False)])
    await database.insert([(logs, [row | {"model": "other"}], True)])
    assert (await read(database, row["id"]))["model"] == "m"


# --- PostgreSQL only ----------------------------------------------------------------------------------------


@pytest.fixture
async def pg_kwargs() -> Any:
    url = await create_pg_database()
    database = Database(url.replace("postgresql://", "postgresql+asyncpg://"))
    await database.migrate()
    _, kwargs = database.engine.dialect.create_connect_args(database.engine.url)
    yield database, kwargs
    await database.close()
    await drop_pg_database(url)


@pytest.mark.parametrize("synchronous", [False, True])
async def test_the_log_connection_commits_as_configured(pg_kwargs: Any, synchronous: bool) -> None:
    _, kwargs = pg_kwargs
    rows = PostgresRows(kwargs, synchronous_commit=synchronous)
    try:
        await rows.insert([(logs, [full_row("p")], False)])
        conn = await rows._connection()
        assert await conn.fetchval("SHOW synchronous_commit") == ("on" if synchronous else "off")
    finally:
        await rows.close()


async def test_a_connection_the_server_closed_is_replaced_before_the_next_insert(pg_kwargs: Any) -> None:
    database, kwargs = pg_kwargs
    rows = PostgresRows(kwargs, synchronous_commit=False)
    try:
        await rows.insert([(logs, [full_row("p")], False)])
        admin = await asyncpg.connect(**kwargs)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'pipeserve-logs' AND datname = current_database()"
            )
        finally:
            await admin.close()
        assert ended == 1
        await asyncio.sleep(0.2)  # the connection hears of its end (as it would between two requests)
        await rows.insert([(logs, [full_row("p")], False)])
    finally:
        await rows.close()
    async with database.connect() as conn:
        assert len((await conn.execute(select(logs.c.id).where(logs.c.project == "p"))).all()) == 2


async def test_a_refused_connection_is_the_store_being_unavailable() -> None:
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing", timeout=2)
    try:
        with pytest.raises(StoreUnavailableError):  # the log writer holds the rows and retries; a route says 503
            await database.insert([(logs, [full_row("p")], False)])
    finally:
        await database.close()
