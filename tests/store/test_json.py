"""Stored JSON reads back as the value that was written, whatever its type, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select

from pipeserve.service import logs as service
from pipeserve.store.db import Database, new_id, now_ms
from pipeserve.store.logwriter import LogWriter
from pipeserve.store.tables import cache_entries, dataset_entries, datasets
from tests.store.test_db import log_row

# Every JSON type, and the numbers a lossy store gets wrong: integers at and beyond 64 bits (orjson reads up to
# 2**64-1 as an int), floats whose text is integral, the extremes of a double.
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    5,
    -7,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.0,
    -0.5,
    0.1,
    0.30000000000000004,
    1e16,
    1e-300,
    5e-324,
    1.7976931348623157e308,
    1.2345678901234568e29,
    "",
    "5",
    "null",
    "héllo ✓ 🦙 \u202e العربية",
    [],
    {},
    [1, "a", None, [2.5, {"x": []}], True],
    {"nested": {"deep": [{"n": 2**64 - 1, "f": 0.1}]}, "ünï": "ß", "": [None]},
]


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (PostgreSQL's JSONB may spell 1e16 as 10000000000000000, which
    Python reads as an int), objects whatever their key order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", VALUES, ids=lambda v: orjson.dumps(v).decode()[:40])
async def test_a_log_payload_reads_back_unchanged(database: Database, project: str, value: Any) -> None:
    writer = LogWriter(database)
    writer.start()
    try:
        await writer.write(log_row(project, req_payload=value, resp_payload=[value]))
        await writer.write(log_row(project, req_payload=orjson.Fragment(orjson.dumps({"v": value}))))
    finally:
        await writer.close()
    page = await service.list_logs(database, project, service.ListQuery(filter=service.LogFilter()))
    requests = sorted((log.request for log in page.data), key=lambda r: isinstance(r, dict) and "v" in r)
    assert same(requests[0], value)
    assert same(requests[1], {"v": value})
    assert any(same(log.response, [value]) for log in page.data)
    one = await service.get_log(database, project, page.data[0].id)
    assert one is not None and same(one.request, page.data[0].request)
    latest = await service.latest_logged_call(database, project)
    assert latest is not None


async def test_every_json_column_keeps_every_type(database: Database, project: str) -> None:
    dataset_id, entry_id = new_id("ds"), new_id("de")
    async with database.begin() as conn:
        await conn.execute(
            insert(datasets).values(id=dataset_id, project=project, name="json", created_at=0, updated_at=0)
        )
        await conn.execute(
            insert(dataset_entries).values(
                id=entry_id,
                dataset_id=dataset_id,
                created_at=0,
                split="TRAIN",
                messages=VALUES,
                rejected_message=5,
                tools=[2**64 - 1],
                tool_choice="none",
                response_format=1.0,
                meta=None,
            )
        )
        await conn.execute(
            insert(cache_entries).values(
                project=project, key="k", model="m", created_at=0, expires_at=now_ms() + 10_000, completion=1e16
            )
        )
    async with database.connect() as conn:
        entry = (await conn.execute(select(dataset_entries).where(dataset_entries.c.id == entry_id))).mappings().one()
        completion = (
            await conn.execute(select(cache_entries.c.completion).where(cache_entries.c.project == project))
        ).scalar_one()
    assert same(entry["messages"], VALUES)
    assert entry["rejected_message"] == 5 and entry["tools"] == [2**64 - 1] and entry["tool_choice"] == "none"
    assert same(entry["response_format"], 1.0)
    assert completion == 1e16


async def test_sqlite_keeps_the_exact_text(database: Database, project: str) -> None:
    if not database.is_sqlite:
        pytest.skip("PostgreSQL's JSONB normalises number spelling and key order by design")
    writer = LogWriter(database)
    writer.start()
    try:
        for value in VALUES:
            await writer.write(log_row(project, req_payload=value))
    finally:
        await writer.close()
    async with database.connect() as conn:
        stored = (
            await conn.exec_driver_sql(
                "SELECT req_payload, typeof(req_payload) FROM logs WHERE project = ? ORDER BY rowid", (project,)
            )
        ).all()
    assert [text for text, _ in stored] == [orjson.dumps(value).decode() for value in VALUES]
    assert {kind for _, kind in stored} == {"text"}
