"""The store on SQLite and on PostgreSQL: migrations, and the group-commit log writer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from pipeserve.store.db import Database, new_id, now_ms
from pipeserve.store.logwriter import LogWriter
from pipeserve.store.tables import logs, metadata


def log_row(project: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": new_id("log"),
        "project": project,
        "source": "report",
        "requested_at": now_ms(),
        "cache_hit": False,
        "meta": {},
        "tags": {},
        "req_payload": {"model": "m"},
    } | extra


async def test_migrations_build_exactly_the_declared_schema(database: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def diff(connection: Any) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    async with database.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_migrating_again_changes_nothing(database: Database) -> None:
    await database.migrate()
    await database.migrate()


async def test_concurrent_writes_share_commits(database: Database, project: str) -> None:
    writer = LogWriter(database)
    writer.start()
    try:
        await asyncio.gather(*(writer.write(log_row(project)) for _ in range(200)))
    finally:
        await writer.close()
    async with database.connect() as conn:
        count = (await conn.execute(select(func.count()).where(logs.c.project == project))).scalar_one()
    assert count == 200
    assert writer.rows == 200
    if not database.is_sqlite:
        # Rows that arrive during a commit go together in the next one. (SQLite commits a row in place when
        # the database is free, ~40 µs without waiting: there is seldom a commit in flight to join.)
        assert writer.commits < 20


async def test_a_bad_row_fails_alone(database: Database, project: str) -> None:
    writer = LogWriter(database)
    writer.start()
    good = [log_row(project) for _ in range(5)]
    bad = log_row(project, id=good[0]["id"])  # a duplicate primary key
    try:
        results = await asyncio.gather(*(writer.write(r) for r in [*good, bad]), return_exceptions=True)
    finally:
        await writer.close()
    assert results[:5] == [None] * 5
    assert isinstance(results[5], Exception)
    async with database.connect() as conn:
        count = (await conn.execute(select(func.count()).where(logs.c.project == project))).scalar_one()
    assert count == 5


async def test_a_write_after_close_is_refused(database: Database, project: str) -> None:
    writer = LogWriter(database)
    writer.start()
    await writer.close()
    with pytest.raises(RuntimeError):
        await writer.write(log_row(project))
