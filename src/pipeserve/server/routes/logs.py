"""The logs endpoints: OpenPipe's reporting and metadata updates, and `GET /logs` to read them back."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.errors import InvalidRequestError, NotFoundError
from pipeserve.protocol import logs as wire
from pipeserve.server.auth import Authenticated
from pipeserve.server.body import parse_body
from pipeserve.server.responses import json_response
from pipeserve.service import logs as service
from pipeserve.service.limits import Limits
from pipeserve.service.log_filters import CriterionCondition, LogFilter, parse_criterion_condition, update_clauses
from pipeserve.service.recording import tag_value
from pipeserve.service.values import check_text, parse_time
from pipeserve.store.db import Database

router = APIRouter()


def _limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


@router.post("/report")
async def report(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, wire.ReportRequest)
    _limits(request).check_keys(body.tags, "tags")
    await service.report(request.app.state.recorder, principal.project, principal.key_id, body)
    return json_response(wire.ReportResponse())


@router.post("/report-anthropic")
async def report_anthropic(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, wire.ReportAnthropicRequest)
    _limits(request).check_keys(body.tags, "tags")
    _limits(request).check_keys(body.metadata, "metadata")
    await service.report_anthropic(request.app.state.recorder, principal.project, principal.key_id, body)
    return json_response(wire.ReportResponse())


@router.post("/logs/update-metadata")
async def update_metadata(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, wire.UpdateMetadataRequest)
    _limits(request).check_filters(body.filters)
    _limits(request).check_keys(body.metadata, "metadata")
    db: Database = request.app.state.db
    where = update_clauses(body.filters, sqlite=db.is_sqlite)
    matched = await service.update_metadata(db, principal.project, where, body.metadata)
    return json_response(wire.UpdateResponse(matched_logs=matched), by_alias=True)


@router.post("/logs/update-tags")
async def update_tags(request: Request, principal: Authenticated) -> Response:
    """Deprecated twin of update-metadata: tags are metadata now; the `tags` column follows along."""
    body = await parse_body(request, wire.UpdateTagsRequest)
    _limits(request).check_filters(body.filters)
    _limits(request).check_keys(body.tags, "tags")
    db: Database = request.app.state.db
    where = update_clauses(body.filters, sqlite=db.is_sqlite)
    changes = {key: tag_value(value) for key, value in body.tags.items()}
    matched = await service.update_metadata(db, principal.project, where, changes, tags_too=True)
    return json_response(wire.UpdateResponse(matched_logs=matched), by_alias=True)


@router.get("/local-testing-only-get-latest-logged-call")
async def latest_logged_call(request: Request, principal: Authenticated) -> Response:
    latest = await service.latest_logged_call(request.app.state.db, principal.project)
    return json_response(latest, by_alias=True)


# --- GET /logs's query string ----------------------------------------------------------------------------

_LIST_PARAMS = {
    "model": "model",
    "status_code": "status_code",
    "status": "status_code",
    "from": "from",
    "since": "from",
    "to": "to",
    "until": "to",
    "limit": "limit",
    "cursor": "cursor",
}


def _metadata_param(name: str) -> str | None:
    """`metadata.<key>`, or `metadata[<key>]` as the openai SDK spells a nested `extra_query`."""
    if name.startswith("metadata."):
        key = name[len("metadata.") :]
    elif name.startswith("metadata[") and name.endswith("]"):
        key = name[len("metadata[") : -1]
    else:
        return None
    if not key:
        raise InvalidRequestError(
            f"The query parameter '{name}' names no key; write metadata.<key>=<value>.", param=name
        )
    return key


def split_query(raw: str) -> tuple[list[tuple[str, str]], list[CriterionCondition]]:
    """The query string's pairs, and its criteria conditions: `criteria.<name>.score<0.5` is no key=value
    pair (`<=` would even split at its `=`), so those are read from the raw query string."""
    pairs: list[tuple[str, str]] = []
    conditions = []
    for part in raw.split("&"):
        if not part:
            continue
        text = unquote_plus(part)
        if text.startswith("criteria."):
            conditions.append(parse_criterion_condition(text))
        else:
            pairs.extend(parse_qsl(part, keep_blank_values=True))
    return pairs, conditions


def parse_list_query(
    items: Sequence[tuple[str, str]], criteria: Sequence[CriterionCondition] = ()
) -> service.ListQuery:
    """GET /logs's query parameters; an unknown or repeated one is a 400 rather than silently ignored."""
    given: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for name, value in items:
        check_text([name, value], name)
        key = _metadata_param(name)
        canonical = _LIST_PARAMS.get(name)
        if key is None and canonical is None:
            raise InvalidRequestError(
                f"Unrecognized query parameter: {name}. GET /logs takes model, status_code, from, to, "
                "metadata.<key>, criteria.<name>.score<…, limit and cursor.",
                param=name,
            )
        if (key is not None and key in metadata) or (canonical is not None and canonical in given):
            raise InvalidRequestError(f"The query parameter '{name}' is given twice; give it once.", param=name)
        if key is not None:
            metadata[key] = value
        elif canonical is not None:
            given[canonical] = value
    status = given.get("status_code")
    return service.ListQuery(
        filter=LogFilter(
            model=given.get("model"),
            status_code=None if status is None else _int_param(status, "status_code", 0, 999),
            since=None if "from" not in given else parse_time(given["from"], "from"),
            until=None if "to" not in given else parse_time(given["to"], "to"),
            metadata=metadata,
            criteria=tuple(criteria),
        ),
        limit=_int_param(given["limit"], "limit", 1, service.MAX_LIMIT) if "limit" in given else service.DEFAULT_LIMIT,
        cursor=given.get("cursor"),
    )


def _int_param(text: str, param: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequestError(
            f"Invalid value for '{param}': expected an integer from {low} to {high}, got {text!r}.", param=param
        )
    return value


@router.get("/logs")
async def list_logs(request: Request, principal: Authenticated) -> Response:
    items, conditions = split_query(request.url.query)
    _limits(request).check_filters([*items, *conditions], param="query")
    query = parse_list_query(items, conditions)
    page = await service.list_logs(request.app.state.db, principal.project, query)
    return json_response(wire.LogList(data=page.data, has_more=page.has_more, next_cursor=page.next_cursor))


@router.get("/logs/{log_id}")
async def get_log(log_id: str, request: Request, principal: Authenticated) -> Response:
    log = await service.get_log(request.app.state.db, principal.project, log_id)
    if log is None:
        raise NotFoundError(
            f"No log with id '{log_id}' in this project. GET /v1/logs lists the logs this key can read.",
            param="log_id",
        )
    return json_response(log)
