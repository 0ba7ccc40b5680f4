"""The request log's service on SQLite and PostgreSQL: reports, filters, pagination and metadata updates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol import logs as wire
from pipeserve.service import logs as service
from pipeserve.service.log_filters import LogFilter, update_clauses
from pipeserve.service.recording import Recorder
from pipeserve.service.values import parse_time
from pipeserve.settings import Price
from pipeserve.store.db import Database, new_id
from pipeserve.store.logwriter import LogWriter
from pipeserve.store.tables import logs

T0 = 1_700_000_000_000


@pytest.fixture
async def recorder(database: Database) -> AsyncIterator[Recorder]:
    writer = LogWriter(database)
    writer.start()
    yield Recorder(writer, {"gpt-test": Price(prompt=1.0, completion=2.0)})
    await writer.close()


async def insert(db: Database, project: str, **extra: Any) -> str:
    row = {
        "id": new_id("log"),
        "project": project,
        "source": "chat",
        "model": "m1",
        "requested_at": T0,
        "status_code": 200,
        "cache_hit": False,
        "meta": {},
        "tags": {},
        "req_payload": {"model": "m1", "messages": [{"role": "user", "content": "Hi"}]},
    } | extra
    async with db.begin() as conn:
        await conn.execute(logs.insert(), [row])
    return str(row["id"])


def body(model: type[wire.ReportRequest] | type[wire.ReportAnthropicRequest], **data: Any) -> Any:
    return model.model_validate(data)


async def test_report_stores_the_call_with_usage_cost_and_merged_metadata(
    database: Database, project: str, recorder: Recorder
) -> None:
    report = body(
        wire.ReportRequest,
        requestedAt=T0,
        receivedAt=T0 + 1500,
        reqPayload={"model": "gpt-test", "messages": [], "metadata": {"a": "from-request"}},
        respPayload={"id": "chatcmpl-ext", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
        statusCode=200,
        tags={"a": "from-tags", "n": 3, "flag": True, "gone": None},
    )
    await service.report(recorder, project, "key_1", report)
    [log] = (await service.list_logs(database, project, service.ListQuery(LogFilter()))).data
    assert log.source == "report"
    assert log.model == "gpt-test"
    assert log.completion_id == "chatcmpl-ext"
    assert log.usage == wire.LogUsage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500)
    assert log.cost == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1_000_000)
    assert log.metadata == {"a": "from-request", "n": "3", "flag": "true"}
    assert log.tags == {"a": "from-tags", "n": "3", "flag": "true"}
    assert log.requested_at == "2023-11-14T22:13:20.000Z"
    assert log.duration_ms == 1500
    assert log.status_code == 200


async def test_report_anthropic(database: Database, project: str, recorder: Recorder) -> None:
    report = body(
        wire.ReportAnthropicRequest,
        reqPayload={"model": "claude-x", "max_tokens": 5, "messages": [], "metadata": {"user_id": "u"}},
        respPayload={"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 3}},
        metadata={"k": "meta"},
        tags={"k": "tag", "t": 1},
    )
    await service.report_anthropic(recorder, project, None, report)
    [log] = (await service.list_logs(database, project, service.ListQuery(LogFilter()))).data
    assert (log.source, log.model, log.completion_id) == ("report-anthropic", "claude-x", "msg_1")
    assert log.usage is not None and (log.usage.prompt_tokens, log.usage.completion_tokens) == (7, 3)
    assert log.cost is None  # no price configured for the model
    assert log.metadata == {"k": "meta", "t": "1"}
    assert log.status_code is None


async def test_report_rejects_bad_request_metadata(project: str, recorder: Recorder) -> None:
    report = body(wire.ReportRequest, reqPayload={"model": "m", "metadata": {"a": 1}})
    with pytest.raises(InvalidRequestError) as caught:
        await service.report(recorder, project, None, report)
    assert caught.value.param == "reqPayload.metadata"


async def test_filters_combine(database: Database, project: str) -> None:
    a = await insert(database, project, meta={"env": "prod", 'odd key"': "x"}, requested_at=T0)
    b = await insert(database, project, meta={"env": "dev"}, model="m2", requested_at=T0 + 10)
    c = await insert(database, project, meta={"env": "prod"}, status_code=500, requested_at=T0 + 20)

    async def ids(**kw: Any) -> list[str]:
        page = await service.list_logs(database, project, service.ListQuery(LogFilter(**kw)))
        return [log.id for log in page.data]

    assert await ids() == [c, b, a]
    assert await ids(metadata={"env": "prod"}) == [c, a]
    assert await ids(metadata={"env": "prod"}, status_code=200) == [a]
    assert await ids(model="m2") == [b]
    assert await ids(since=T0 + 10) == [c, b]
    assert await ids(until=T0 + 10) == [a]
    assert await ids(metadata={'odd key"': "x"}) == [a]
    assert await ids(metadata={"missing": "x"}) == []
    assert await ids(metadata={"env": "prod"}, model="m2") == []


# Keys that JSON writes escaped (SQLite's JSON paths can't spell them) and keys that look like path syntax.
ODD_KEYS = ['a"b', "a\\b", "line\nbreak", "tab\t", "\x01", '\\"', "é", "a.b", "[0]", "$.x", "a'b", "*"]


async def test_metadata_keys_of_any_spelling_are_found(database: Database, project: str) -> None:
    ids = {key: await insert(database, project, meta={key: "v", "n": str(i)}) for i, key in enumerate(ODD_KEYS)}
    sqlite = database.is_sqlite
    for key, log_id in ids.items():
        page = await service.list_logs(database, project, service.ListQuery(LogFilter(metadata={key: "v"})))
        assert [log.id for log in page.data] == [log_id], key
        where = update_clauses(items((f"metadata.{key}", "v")), sqlite=sqlite)
        assert await service.update_metadata(database, project, where, {"seen": "yes"}) == 1, key


async def test_pagination_has_no_gaps_or_repeats(database: Database, project: str) -> None:
    # equal timestamps in runs: the id breaks the tie, so pages neither skip nor repeat across them
    made = {await insert(database, project, requested_at=T0 + i // 3) for i in range(23)}
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list_logs(database, project, service.ListQuery(LogFilter(), 5, cursor))
        seen += [log.id for log in page.data]
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert len(seen) == 23 and set(seen) == made
    exported = [log.id async for log in service.iter_logs(database, project, LogFilter())]
    assert exported == seen
    assert len([log async for log in service.iter_logs(database, project, LogFilter(), limit=7)]) == 7


# Not base64; a time beyond the range; a NUL in the id (PostgreSQL would fail on it); a time that is no integer.
@pytest.mark.parametrize("cursor", ["nonsense", "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6eA==", "MToA", "bm90OmFuLWludA=="])
async def test_a_bad_cursor_is_a_400(database: Database, project: str, cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await service.list_logs(database, project, service.ListQuery(LogFilter(), cursor=cursor))
    assert caught.value.param == "cursor"


def items(*pairs: tuple[str, Any]) -> list[wire.LogFilterItem]:
    return [wire.LogFilterItem(field=f, equals=v) for f, v in pairs]


async def test_update_metadata_sets_overwrites_and_deletes(database: Database, project: str) -> None:
    a = await insert(database, project, meta={"prompt": "p1", "drop": "x"}, completion_id="cmpl-a")
    b = await insert(database, project, meta={"prompt": "p1"}, completion_id="cmpl-b", model="m2")
    other = await insert(database, project, meta={"prompt": "p2"})
    sqlite = database.is_sqlite

    where = update_clauses(items(("metadata.prompt", "p1")), sqlite=sqlite)
    assert await service.update_metadata(database, project, where, {"relabel": "true", "drop": None}) == 2
    where = update_clauses(items(("completionId", "cmpl-a"), ("model", "m1")), sqlite=sqlite)
    assert await service.update_metadata(database, project, where, {"relabel": "false"}) == 1
    where = update_clauses(items(("model", "m2"), ("completionId", "cmpl-a")), sqlite=sqlite)
    assert await service.update_metadata(database, project, where, {"relabel": "never"}) == 0

    async def meta(log_id: str) -> dict[str, str]:
        log = await service.get_log(database, project, log_id)
        assert log is not None
        return log.metadata

    assert await meta(a) == {"prompt": "p1", "relabel": "false"}
    assert await meta(b) == {"prompt": "p1", "relabel": "true"}
    assert await meta(other) == {"prompt": "p2"}
    # nothing to change still counts what matched
    where = update_clauses(items(("metadata.prompt", "p1")), sqlite=sqlite)
    assert await service.update_metadata(database, project, where, {}) == 2
    # no filter matches every log of the project, and only of this project
    assert await service.update_metadata(database, project, [], {"all": "yes"}) == 3


async def test_update_tags_keeps_the_tags_column_in_step(database: Database, project: str) -> None:
    a = await insert(database, project, meta={"t": "1", "k": "v"}, tags={"t": "1"})
    where = update_clauses(items(("tags.t", 1)), sqlite=database.is_sqlite)
    assert await service.update_metadata(database, project, where, {"t": None, "new": "true"}, tags_too=True) == 1
    log = await service.get_log(database, project, a)
    assert log is not None
    assert log.metadata == {"k": "v", "new": "true"}
    assert log.tags == {"new": "true"}


def test_unknown_filter_field_is_named() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        update_clauses(items(("model", "m"), ("prompt", "x")), sqlite=True)
    assert caught.value.param == "filters[1].field"


async def test_projects_are_isolated(database: Database, project: str) -> None:
    mine = await insert(database, project, meta={"shared": "v"})
    theirs = project + "-other"
    await insert(database, theirs, meta={"shared": "v"})
    assert await service.get_log(database, theirs, mine) is None
    where = update_clauses(items(("metadata.shared", "v")), sqlite=database.is_sqlite)
    assert await service.update_metadata(database, theirs, where, {"shared": None}) == 1
    log = await service.get_log(database, project, mine)
    assert log is not None and log.metadata == {"shared": "v"}


async def test_latest_logged_call(database: Database, project: str) -> None:
    assert await service.latest_logged_call(database, project) is None
    await insert(database, project, requested_at=T0)
    await insert(database, project, requested_at=T0 + 5, meta={"x": "1"}, tags={"x": "1"}, status_code=None)
    latest = await service.latest_logged_call(database, project)
    assert latest is not None
    assert latest.metadata == {"x": "1"} and latest.status_code is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1700000000000", T0),
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20", T0),
        ("2023-11-14T23:13:20+01:00", T0),
        ("2023-11-14", T0 - (22 * 3600 + 13 * 60 + 20) * 1000),
    ],
)
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text, "from") == ms


def test_parse_time_names_the_parameter() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_time("yesterday", "from")
    assert caught.value.param == "from"
