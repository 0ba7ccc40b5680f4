"""The datasets service on SQLite and PostgreSQL: datasets, entries, splits, entries from logs, export."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import insert

from pipeserve.errors import InvalidRequestError, NotFoundError
from pipeserve.protocol.chat_completions import ChatCompletion
from pipeserve.protocol.datasets import CreateDatasetEntriesRequest, CreateDatasetRequest, LogFilter
from pipeserve.service.dataset_entries import auto_split
from pipeserve.service.datasets import DatasetService
from pipeserve.service.values import parse_time
from pipeserve.store.db import Database, new_id, now_ms
from pipeserve.store.tables import logs
from pipeserve.validation import validate

USER = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "4"}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


def entry(text: str = "What is 2+2?", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}, ANSWER]} | extra


async def new_dataset(service: DatasetService, project: str, name: str = "d") -> str:
    return (await service.create_dataset(project, CreateDatasetRequest(name=name))).id


async def add(service: DatasetService, project: str, dataset_id: str, entries: list[Any]) -> Any:
    return await service.add_entries(project, dataset_id, CreateDatasetEntriesRequest(entries=entries))


async def export(service: DatasetService, project: str, dataset_id: str, **options: Any) -> list[Any]:
    body = b"".join([chunk async for chunk in await service.export(project, dataset_id, **options)])
    assert body == b"" or body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()]


async def test_create_list_get_delete(database: Database, project: str) -> None:
    service = DatasetService(database)
    first = await service.create_dataset(project, CreateDatasetRequest(name="first"))
    second = await service.create_dataset(project, CreateDatasetRequest(name="second"))
    assert first.id.startswith("ds_")
    assert first.model_dump()["object"] == "dataset"
    assert first.created.endswith("Z")
    assert (first.dataset_entry_count, first.fine_tune_count) == (0, 0)

    await add(service, project, first.id, [entry(), entry("3+3?")])
    listed = await service.list_datasets(project)
    assert [d.id for d in listed.data] == [second.id, first.id]  # newest first
    assert [d.dataset_entry_count for d in listed.data] == [0, 2]
    got = await service.get_dataset(project, first.id)
    assert got.dataset_entry_count == 2
    assert got.updated >= got.created

    deleted = await service.delete_dataset(project, first.id)
    assert deleted.model_dump() == {"id": first.id, "object": "dataset", "deleted": True}
    assert [d.id for d in (await service.list_datasets(project)).data] == [second.id]
    with pytest.raises(NotFoundError):
        await service.delete_dataset(project, first.id)
    with pytest.raises(NotFoundError):
        await service.get_dataset(project, first.id)


async def test_projects_are_isolated(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    await add(service, project, dataset_id, [entry()])
    other = project + "-other"
    assert (await service.list_datasets(other)).data == []
    for attempt in (
        service.get_dataset(other, dataset_id),
        service.delete_dataset(other, dataset_id),
        add(service, other, dataset_id, [entry()]),
        add(service, other, dataset_id, []),
        service.add_entries_from_logs(other, dataset_id, LogFilter()),
        service.list_entries(other, dataset_id),
        service.export(other, dataset_id),
    ):
        with pytest.raises(NotFoundError) as caught:
            await attempt
        assert caught.value.status_code == 404
    assert (await service.get_dataset(project, dataset_id)).dataset_entry_count == 1


async def test_invalid_entries_fail_alone_with_their_index(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    result = await add(
        service,
        project,
        dataset_id,
        [
            entry("kept 1"),
            ["not", "an", "object"],
            {"messages": [USER]},  # no answer to learn
            {"messages": [{"role": "robot", "content": "x"}, ANSWER]},
            entry(colour="blue"),
            {"messages": []},
            entry(split="VALIDATION"),
            {"messages": [USER, {"role": "assistant"}]},
            entry("kept 2", split="TEST"),
        ],
    )
    dumped = result.model_dump()
    assert dumped["object"] == "dataset.entries.creation"
    assert dumped["entries_created"] == 2
    assert dumped["errors"]["object"] == "list"
    errors = {e["entry_index"]: e["message"] for e in dumped["errors"]["data"]}
    assert {e["object"] for e in dumped["errors"]["data"]} == {"dataset.entries.creation.error"}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6, 7]
    assert "JSON object" in errors[1]
    assert "ends with the assistant message" in errors[2] and '"role": "assistant"' in errors[2]
    assert "messages[0]" in errors[3]
    assert "colour" in errors[4]
    assert "messages" in errors[5]
    assert "split" in errors[6]
    assert "no content" in errors[7]
    listed = await service.list_entries(project, dataset_id)
    assert [e.messages[0]["content"] for e in listed.data] == ["kept 1", "kept 2"]  # request order


async def test_splits_explicit_and_automatic(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    texts = [f"question {i}" for i in range(100)]
    await add(service, project, dataset_id, [entry(t) for t in texts] + [entry("pinned", split="TEST")])
    await add(service, project, dataset_id, [entry("question 7")])  # the same conversation again
    listed = await service.list_entries(project, dataset_id, limit=1000)
    splits = [e.split for e in listed.data]
    # Automatic: a hash of the conversation, so about 10% TEST and always the same side for the same one.
    assert splits[:100] == [auto_split(entry(t)["messages"]) for t in texts]
    assert 3 <= splits[:100].count("TEST") <= 20
    assert splits[100] == "TEST"
    assert splits[101] == splits[7]


async def test_entries_keep_every_field(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    full = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "4", "tool_call_id": "call_1"},
            ANSWER,
        ],
        "rejected_message": {"content": "5"},
        "tools": TOOLS,
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
        "split": "TRAIN",
        "metadata": {"prompt_id": "p1"},
    }
    assert (await add(service, project, dataset_id, [full])).entries_created == 1
    [stored] = (await service.list_entries(project, dataset_id)).data
    assert stored.id.startswith("dse_")
    assert stored.messages[2] == {"role": "assistant", "tool_calls": [call]}  # null fields dropped
    assert stored.messages[3] == full["messages"][3]  # type: ignore[index]
    assert stored.rejected_message == {"role": "assistant", "content": "5"}
    assert stored.tools == TOOLS
    assert stored.tool_choice == "auto"
    assert stored.response_format == full["response_format"]
    assert stored.metadata == {"prompt_id": "p1"}
    assert stored.log_id is None


async def test_export_formats_exactly(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    await add(
        service,
        project,
        dataset_id,
        [
            entry("a", split="TRAIN"),
            entry("b", split="TEST", tools=TOOLS, rejected_message={"role": "assistant", "content": "5"}),
            entry("c", split="TRAIN", rejected_message={"content": "five"}),
        ],
    )
    assert await export(service, project, dataset_id) == [
        {"messages": [{"role": "user", "content": "a"}, ANSWER]},
        {"messages": [{"role": "user", "content": "b"}, ANSWER], "tools": TOOLS},
        {"messages": [{"role": "user", "content": "c"}, ANSWER]},
    ]
    assert await export(service, project, dataset_id, split="TEST") == [
        {"messages": [{"role": "user", "content": "b"}, ANSWER], "tools": TOOLS}
    ]
    assert await export(service, project, dataset_id, fmt="preference") == [
        {
            "input": {"messages": [{"role": "user", "content": "b"}], "tools": TOOLS},
            "preferred_output": [ANSWER],
            "non_preferred_output": [{"role": "assistant", "content": "5"}],
        },
        {
            "input": {"messages": [{"role": "user", "content": "c"}]},
            "preferred_output": [ANSWER],
            "non_preferred_output": [{"role": "assistant", "content": "five"}],
        },
    ]
    assert await export(service, project, dataset_id, split="TRAIN", fmt="preference") == [
        {
            "input": {"messages": [{"role": "user", "content": "c"}]},
            "preferred_output": [ANSWER],
            "non_preferred_output": [{"role": "assistant", "content": "five"}],
        }
    ]
    empty = await new_dataset(service, project)
    assert await export(service, project, empty) == []


async def test_entries_page_with_a_cursor(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    for batch in range(3):
        await add(service, project, dataset_id, [entry(f"{batch}-{i}") for i in range(3)])
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list_entries(project, dataset_id, limit=2, cursor=cursor)
        seen += [e.messages[0]["content"] for e in page.data]
        if not page.has_more:
            assert page.next_cursor is None
            break
        cursor = page.next_cursor
    assert seen == [f"{b}-{i}" for b in range(3) for i in range(3)]
    with pytest.raises(InvalidRequestError) as caught:
        await service.list_entries(project, dataset_id, cursor="not a cursor")
    assert caught.value.param == "cursor"
    with pytest.raises(InvalidRequestError):
        await service.list_entries(project, dataset_id, limit=0)


# --- entries from logs -----------------------------------------------------------------------------------


def completion(message: dict[str, Any]) -> dict[str, Any]:
    """A logged response, as the server records it (the `ChatCompletion` model dumped)."""
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "total_tokens": 6,
        "prompt_tokens_details": {},
        "completion_tokens_details": {},
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": 5,
    }
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return ChatCompletion.model_validate(
        {"id": "chatcmpl-1", "created": 1, "model": "m", "choices": [choice], "usage": usage}
    ).model_dump(mode="json")


def log_row(project: str, request: dict[str, Any], response: Any, **extra: Any) -> dict[str, Any]:
    """A row with the columns `Recorder.record` writes."""
    return {
        "id": new_id("log"),
        "project": project,
        "source": "chat",
        "completion_id": "chatcmpl-1",
        "model": request.get("model"),
        "requested_at": now_ms(),
        "received_at": now_ms(),
        "ttft_ms": 1.0,
        "duration_ms": 2.0,
        "status_code": 200,
        "error_message": None,
        "req_payload": request,
        "resp_payload": response,
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "cost": None,
        "cache_hit": False,
        "key_id": None,
        "meta": {},
        "tags": {},
    } | extra


async def insert_logs(database: Database, rows: list[dict[str, Any]]) -> None:
    async with database.begin() as conn:
        await conn.execute(insert(logs), rows)


async def test_entries_from_logs(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    t0 = 1_700_000_000_000
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    plain = log_row(
        project,
        {"model": "m", "messages": [USER], "temperature": 0.5},
        completion({"role": "assistant", "content": "4"}),
        requested_at=t0,
        meta={"prompt_id": "p1"},
    )
    tooled = log_row(
        project,
        {"model": "m", "messages": [USER], "tools": TOOLS, "tool_choice": "required"},
        completion({"role": "assistant", "content": None, "tool_calls": [call]}),
        requested_at=t0 + 1,
    )
    rows = [
        plain,
        tooled,
        log_row(project, {"model": "m", "messages": [USER]}, None, requested_at=t0 + 2, status_code=500),
        log_row(
            project, {"model": "m", "messages": [USER]}, {"content": []}, requested_at=t0 + 3, source="report-anthropic"
        ),
        log_row(project, {"model": "m", "messages": "oops"}, completion(ANSWER), requested_at=t0 + 4),
        log_row(project, {"model": "other", "messages": [USER]}, completion(ANSWER), requested_at=t0 + 5),
        log_row(project + "-b", {"model": "m", "messages": [USER]}, completion(ANSWER), requested_at=t0 + 6),
        log_row(project, {"model": "m", "messages": [USER]}, completion(ANSWER), requested_at=t0 + 7, cache_hit=True),
    ]
    await insert_logs(database, rows)

    result = await service.add_entries_from_logs(project, dataset_id, validate(LogFilter, {"model": "m"}))
    assert result.entries_created == 2
    assert result.skipped == 2  # the Anthropic report and the cache hit
    [error] = result.errors.data
    assert error.entry_index == 3 and rows[4]["id"] in error.message and "messages" in error.message
    dumped = result.model_dump()
    assert dumped["object"] == "dataset.entries.creation"

    first, second = (await service.list_entries(project, dataset_id)).data
    assert first.log_id == plain["id"] and second.log_id == tooled["id"]
    assert first.messages == [USER, ANSWER]
    assert first.metadata == {"prompt_id": "p1"}
    assert first.tools is None
    assert second.messages == [USER, {"role": "assistant", "tool_calls": [call]}]
    assert second.tools == TOOLS and second.tool_choice == "required"

    again = await service.add_entries_from_logs(project, dataset_id, validate(LogFilter, {"model": "m"}))
    assert (again.entries_created, again.skipped) == (0, 4)  # the two are in the dataset already
    assert (await service.get_dataset(project, dataset_id)).dataset_entry_count == 2


async def test_reported_responses_of_any_shape_become_entries_or_errors(database: Database, project: str) -> None:
    # A report's payloads are whatever its sender chose: no shape may fail the whole request.
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    request = {"model": "m", "messages": [USER]}
    odd = [
        [1],
        [[{"message": ANSWER}]],
        ["x"],
        [{"message": [ANSWER]}],
        [{"message": {"role": "assistant", "content": "4", "tool_calls": 5}}],
        [{"message": {"role": "assistant", "content": "4", "tool_calls": {"id": "x"}}}],
        [{"message": {"role": "assistant", "content": None, "tool_calls": [1, "x", None]}}],
        [{"message": {"role": "assistant", "content": "4", "function_call": "f"}}],
    ]
    t0 = 1_700_000_000_000
    rows = [log_row(project, request, {"choices": c}, source="report", requested_at=t0 + i) for i, c in enumerate(odd)]
    await insert_logs(database, rows)
    result = await service.add_entries_from_logs(project, dataset_id, LogFilter())
    assert (result.entries_created, result.skipped, len(result.errors.data)) == (1, 4, 3)
    assert [error.entry_index for error in result.errors.data] == [4, 5, 6]
    [stored] = (await service.list_entries(project, dataset_id)).data
    assert stored.log_id == rows[7]["id"] and stored.messages[-1] == ANSWER


async def test_from_logs_finds_metadata_keys_of_any_spelling(database: Database, project: str) -> None:
    # Keys that JSON writes escaped, which SQLite's JSON paths can't spell, and keys that look like path syntax.
    keys = ['a"b', "a\\b", "line\nbreak", "\x01", "é", "a.b", "[0]", "$.x"]
    service = DatasetService(database)
    request = {"model": "m", "messages": [USER]}
    rows = [log_row(project, request, completion(ANSWER), meta={key: "v"}) for key in keys]
    await insert_logs(database, rows)
    for key, row in zip(keys, rows, strict=True):
        dataset_id = await new_dataset(service, project)
        found = await service.add_entries_from_logs(project, dataset_id, validate(LogFilter, {"metadata": {key: "v"}}))
        assert found.entries_created == 1, key
        [stored] = (await service.list_entries(project, dataset_id)).data
        assert stored.log_id == row["id"], key
        without = await service.add_entries_from_logs(
            project, await new_dataset(service, project), validate(LogFilter, {"metadata": {key: None}})
        )
        assert without.entries_created == len(keys) - 1, key


async def test_log_filters(database: Database, project: str) -> None:
    service = DatasetService(database)
    t0 = 1_700_000_000_000
    rows = [
        log_row(
            project,
            {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
            completion(ANSWER),
            requested_at=t0 + i * 1000,
            meta={"prompt_id": "even" if i % 2 == 0 else "odd"},
        )
        for i in range(6)
    ]
    await insert_logs(database, rows)

    async def taken(**log_filter: Any) -> list[str]:
        dataset_id = await new_dataset(service, project)
        await service.add_entries_from_logs(project, dataset_id, validate(LogFilter, log_filter))
        return [e.messages[0]["content"] for e in (await service.list_entries(project, dataset_id)).data]

    assert await taken() == ["0", "1", "2", "3", "4", "5"]
    assert await taken(metadata={"prompt_id": "even"}) == ["0", "2", "4"]
    assert await taken(metadata={"prompt_id": None}) == []
    assert await taken(metadata={'we"ird': "x"}) == []
    assert await taken(limit=2) == ["0", "1"]
    assert await taken(**{"from": t0 + 2000, "to": "2023-11-14T22:13:24Z"}) == ["2", "3"]
    assert await taken(**{"from": "2023-11-14T22:13:23"}) == ["3", "4", "5"]
    split = await new_dataset(service, project)
    await service.add_entries_from_logs(project, split, validate(LogFilter, {"split": "TEST"}))
    assert {e.split for e in (await service.list_entries(project, split)).data} == {"TEST"}
    with pytest.raises(InvalidRequestError) as caught:
        await taken(**{"from": "yesterday"})
    assert caught.value.param == "from"
    with pytest.raises(InvalidRequestError):
        validate(LogFilter, {"status_code": 500})


def test_parse_time() -> None:
    assert parse_time(1_700_000_000_000, "from") == 1_700_000_000_000
    assert parse_time("1700000000000", "from") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z", "from") == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20+01:00", "from") == 1_700_000_000_000


async def test_input_the_store_cannot_keep_is_refused(database: Database, project: str) -> None:
    # PostgreSQL refuses NUL characters and SQLite integers beyond 64 bits: each must be a 4xx, not a 500.
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    result = await add(service, project, dataset_id, [entry("nul \x00 here"), entry(metadata={"k\x00": "v"})])
    assert result.entries_created == 0
    assert all("NUL" in error.message for error in result.errors.data)
    with pytest.raises(InvalidRequestError):
        await service.create_dataset(project, CreateDatasetRequest(name="a\x00b"))
    for attempt in (
        service.get_dataset(project, "ds_\x00"),
        service.delete_dataset(project, "ds_\x00"),
        add(service, project, "ds_\x00", [entry()]),
    ):
        with pytest.raises(NotFoundError):
            await attempt
    for log_filter in ({"model": "\x00"}, {"metadata": {"k": "\x00"}}, {"from": 10**30}, {"to": "9" * 40}):
        with pytest.raises(InvalidRequestError):
            await service.add_entries_from_logs(project, dataset_id, validate(LogFilter, log_filter))
    for cursor in ("OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6eA==", "MToA", "bm90OmFuLWludA=="):
        with pytest.raises(InvalidRequestError):
            await service.list_entries(project, dataset_id, cursor=cursor)


async def test_reports_without_a_status_count_as_successes(database: Database, project: str) -> None:
    service = DatasetService(database)
    dataset_id = await new_dataset(service, project)
    request = {"model": "m", "messages": [USER]}
    reported = log_row(project, request, completion(ANSWER), source="report", status_code=None)
    failed = log_row(project, request, None, source="report", status_code=None, error_message="timeout")
    created = log_row(project, request, completion(ANSWER), status_code=201)
    await insert_logs(database, [reported, failed, created])
    result = await service.add_entries_from_logs(project, dataset_id, LogFilter())
    assert (result.entries_created, result.skipped, result.errors.data) == (1, 0, [])
    [stored] = (await service.list_entries(project, dataset_id)).data
    assert stored.log_id == reported["id"]
    result = await service.add_entries_from_logs(project, dataset_id, validate(LogFilter, {"status_code": 201}))
    assert result.entries_created == 1
