"""The request log: reports of outside calls, filtered listing, and metadata updates.

Shared by the HTTP routes and the `pipeserve logs` command. Every query filters on the project it is given,
so a key of one project never reads or changes another project's logs. Which logs a listing or an update
selects is `log_filters`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Text, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnElement

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol import logs as wire
from pipeserve.service.log_filters import LogFilter
from pipeserve.service.recording import Call, Recorder, stringify_tags
from pipeserve.service.values import check_text, decode_cursor, encode_cursor, iso
from pipeserve.store.db import Database, now_ms
from pipeserve.store.tables import logs

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
EXPORT_PAGE = 500  # rows per query when streaming every matching log (export)

# --- times ---------------------------------------------------------------------------------------------------


# --- reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    filter: LogFilter
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


@dataclass
class Page:
    data: list[wire.Log]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


async def list_logs(db: Database, project: str, query: ListQuery) -> Page:
    """One page, newest first. Keyset pagination on (requested_at, id): a log written while a client pages
    neither shifts nor repeats the pages after it."""
    stmt = select(logs).where(logs.c.project == project, *query.filter.clauses(sqlite=db.is_sqlite))
    if query.cursor is not None:
        after = decode_cursor(query.cursor)
        stmt = stmt.where(tuple_(logs.c.requested_at, logs.c.id) < tuple_(literal(after[0]), literal(after[1])))
    stmt = stmt.order_by(logs.c.requested_at.desc(), logs.c.id.desc()).limit(query.limit + 1)
    async with db.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = encode_cursor(rows[-1]["requested_at"], rows[-1]["id"]) if more else None
    return Page(data=[to_log(row) for row in rows], next_cursor=cursor)


async def iter_logs(db: Database, project: str, flt: LogFilter, *, limit: int | None = None) -> AsyncIterator[wire.Log]:
    """Every matching log (up to `limit`), newest first, fetched a page at a time so memory stays flat."""
    cursor: str | None = None
    left = limit
    while left is None or left > 0:
        size = EXPORT_PAGE if left is None else min(EXPORT_PAGE, left)
        page = await list_logs(db, project, ListQuery(filter=flt, limit=size, cursor=cursor))
        for log in page.data:
            yield log
        if left is not None:
            left -= len(page.data)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def get_log(db: Database, project: str, log_id: str) -> wire.Log | None:
    check_text(log_id, "log_id")
    async with db.connect() as conn:
        row = (
            (await conn.execute(select(logs).where(logs.c.project == project, logs.c.id == log_id))).mappings().first()
        )
    return None if row is None else to_log(row)


async def latest_logged_call(db: Database, project: str) -> wire.LatestLoggedCall | None:
    stmt = select(logs).where(logs.c.project == project).order_by(logs.c.requested_at.desc(), logs.c.id.desc()).limit(1)
    async with db.connect() as conn:
        row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        return None
    return wire.LatestLoggedCall(
        created_at=datetime.fromtimestamp(row["requested_at"] / 1000, UTC),
        cache_hit=row["cache_hit"],
        status_code=row["status_code"],
        error_message=row["error_message"],
        req_payload=row["req_payload"],
        resp_payload=row["resp_payload"],
        tags=_strings(row["tags"]),
        metadata=_strings(row["meta"]),
    )


def to_log(row: Mapping[str, Any]) -> wire.Log:
    prompt, completion = row["prompt_tokens"], row["completion_tokens"]
    usage = None
    if prompt is not None or completion is not None:
        total = None if prompt is None or completion is None else prompt + completion
        usage = wire.LogUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)
    return wire.Log(
        id=row["id"],
        source=row["source"],
        completion_id=row["completion_id"],
        model=row["model"],
        requested_at=iso(row["requested_at"]),
        received_at=None if row["received_at"] is None else iso(row["received_at"]),
        time_to_first_token_ms=row["ttft_ms"],
        duration_ms=row["duration_ms"],
        status_code=row["status_code"],
        error_message=row["error_message"],
        request=row["req_payload"],
        response=row["resp_payload"],
        usage=usage,
        cost=row["cost"],
        cache_hit=row["cache_hit"],
        metadata=_strings(row["meta"]),
        tags=_object(row["tags"]),
    )


def _object(value: Any) -> dict[str, Any]:
    # Every write stores an object here; a read must not fail on a row whatever it holds.
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> dict[str, str]:
    """Metadata as the string pairs it is written as; anything else reads as its JSON text."""
    return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in _object(value).items()}


# --- changing metadata ---------------------------------------------------------------------------------------


async def update_metadata(
    db: Database,
    project: str,
    where: Sequence[ColumnElement[bool]],
    changes: Mapping[str, str | None],
    *,
    tags_too: bool = False,
) -> int:
    """Set (or, for None, delete) metadata keys on every matching log; the number of logs matched.

    One UPDATE merges the change into each row inside the database, so concurrent updates of different keys
    on the same log both survive (no read-modify-write from Python)."""
    check_text(changes, "metadata")
    selected = [logs.c.project == project, *where]
    async with db.begin() as conn:
        if not changes:
            return int((await conn.execute(select(func.count()).select_from(logs).where(*selected))).scalar_one())
        values = {"meta": _merged(db, logs.c.meta, changes)}
        if tags_too:
            values["tags"] = _merged(db, logs.c.tags, changes)
        result = await conn.execute(update(logs).where(*selected).values(values))
    return int(result.rowcount)


def _merged(db: Database, column: Any, changes: Mapping[str, str | None]) -> Any:
    if db.is_sqlite:
        # JSON merge patch (RFC 7396): a null member deletes the key, any other value sets it
        return func.json_patch(column, literal(orjson.dumps(dict(changes)).decode(), Text))
    merged = column.op("||", return_type=JSONB)(literal({k: v for k, v in changes.items() if v is not None}, JSONB))
    deleted = [k for k, v in changes.items() if v is None]
    return merged.op("-", return_type=JSONB)(literal(deleted, ARRAY(Text))) if deleted else merged


# --- reports of calls made elsewhere -------------------------------------------------------------------------


def _request_metadata(payload: Any) -> dict[str, str]:
    """An OpenAI request's own `metadata` (string pairs), which OpenPipe merges over the report's tags."""
    raw = payload.get("metadata") if isinstance(payload, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidRequestError(
            "Invalid value for 'reqPayload.metadata': it must be an object of string values, as OpenAI's "
            '`metadata` is (e.g. {"prompt_id": "greeting"}).',
            param="reqPayload.metadata",
        )
    return {str(k): v for k, v in raw.items()}


def _times(requested: float | None, received: float | None) -> tuple[int, int | None]:
    received_at = None if received is None else round(received)
    requested_at = round(requested) if requested is not None else received_at if received_at is not None else now_ms()
    if received_at is not None and received_at < requested_at:
        raise InvalidRequestError(
            "Invalid value for 'receivedAt': it is before 'requestedAt'. Both are Unix times in milliseconds.",
            param="receivedAt",
        )
    return requested_at, received_at


def _field(payload: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(name)
    return payload


def _short(value: Any, limit: int, param: str) -> str | None:
    """A string that fits its VARCHAR column (PostgreSQL refuses a longer one), else a 400; None if not text."""
    if not isinstance(value, str):
        return None
    if len(value) > limit:
        raise InvalidRequestError(f"Invalid value for '{param}': longer than {limit} characters.", param=param)
    return value


def _usage(resp: Any, prompt_key: str, completion_key: str) -> tuple[int, int] | None:
    prompt, completion = _field(resp, "usage", prompt_key), _field(resp, "usage", completion_key)
    counts = (prompt, completion)
    if all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in counts):
        return prompt, completion
    return None


async def _record(
    recorder: Recorder,
    body: wire.ReportRequest | wire.ReportAnthropicRequest,
    call: Call,
    received_at: int | None,
    usage: tuple[int, int] | None,
) -> None:
    for param, value in [
        ("reqPayload", body.req_payload),
        ("respPayload", body.resp_payload),
        ("errorMessage", body.error_message),
        ("tags", body.tags),
        ("metadata", call.metadata),
    ]:
        check_text(value, param)
    model = _short(_field(body.req_payload, "model"), 200, "reqPayload.model")
    if model is None:
        model = _short(_field(body.resp_payload, "model"), 200, "respPayload.model")
    completion_id = _short(_field(body.resp_payload, "id"), 100, "respPayload.id")
    await recorder.record(
        call,
        status_code=body.status_code,  # reports may leave it out: the log keeps null
        resp_payload=body.resp_payload,
        error_message=body.error_message,
        model=model,
        usage=usage,
        received_at=received_at,
        completion_id=completion_id,
    )


async def report(recorder: Recorder, project: str, key_id: str | None, body: wire.ReportRequest) -> None:
    """Log a call made to an OpenAI-compatible API: metadata is the tags overlaid by reqPayload.metadata."""
    tags = stringify_tags(body.tags)
    metadata = {**tags, **_request_metadata(body.req_payload)}
    requested_at, received_at = _times(body.requested_at, body.received_at)
    call = Call(
        project=project,
        key_id=key_id,
        source="report",
        req_payload=body.req_payload,
        metadata=metadata,
        tags=tags,
        requested_at=requested_at,
    )
    usage = _usage(body.resp_payload, "prompt_tokens", "completion_tokens")
    await _record(recorder, body, call, received_at, usage)


async def report_anthropic(
    recorder: Recorder, project: str, key_id: str | None, body: wire.ReportAnthropicRequest
) -> None:
    """Log a call made to Anthropic: metadata is the tags overlaid by the report's `metadata` (Anthropic's
    own request `metadata` is its `user_id`, not ours)."""
    tags = stringify_tags(body.tags)
    requested_at, received_at = _times(body.requested_at, body.received_at)
    call = Call(
        project=project,
        key_id=key_id,
        source="report-anthropic",
        req_payload=body.req_payload,
        metadata={**tags, **body.metadata},
        tags=tags,
        requested_at=requested_at,
    )
    usage = _usage(body.resp_payload, "input_tokens", "output_tokens")
    await _record(recorder, body, call, received_at, usage)
