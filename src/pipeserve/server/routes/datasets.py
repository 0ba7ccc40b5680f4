"""The datasets endpoints: OpenPipe's `/datasets` API and our extensions (docs/api.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.datasets import CreateDatasetEntriesRequest, CreateDatasetRequest, LogFilter
from pipeserve.server.auth import Authenticated
from pipeserve.server.body import parse_body
from pipeserve.server.responses import json_response
from pipeserve.service.datasets import DatasetService

router = APIRouter()


def _service(request: Request) -> DatasetService:
    return DatasetService(request.app.state.db)


def _query_choice(request: Request, name: str, choices: tuple[str, ...], default: str | None) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # `split=train` is as clear as `split=TRAIN`; formats are lower case.
    value = raw.upper() if choices[0].isupper() else raw.lower()
    if value not in choices:
        raise InvalidRequestError(f"Invalid value for '{name}': {raw!r}. Use one of: {', '.join(choices)}.", param=name)
    return value


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(f"Invalid value for '{name}': {raw!r} is not an integer.", param=name) from None


@router.get("/datasets")
async def list_datasets(request: Request, principal: Authenticated) -> Response:
    return json_response(await _service(request).list_datasets(principal.project))


@router.post("/datasets")
async def create_dataset(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, CreateDatasetRequest)
    return json_response(await _service(request).create_dataset(principal.project, body))


@router.get("/datasets/{dataset_id}")
async def get_dataset(dataset_id: str, request: Request, principal: Authenticated) -> Response:
    return json_response(await _service(request).get_dataset(principal.project, dataset_id))


@router.delete("/datasets/{dataset_id}")
async def delete_dataset(dataset_id: str, request: Request, principal: Authenticated) -> Response:
    return json_response(await _service(request).delete_dataset(principal.project, dataset_id))


@router.post("/datasets/{dataset_id}/entries")
async def create_entries(dataset_id: str, request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, CreateDatasetEntriesRequest)
    return json_response(await _service(request).add_entries(principal.project, dataset_id, body))


@router.get("/datasets/{dataset_id}/entries")
async def list_entries(dataset_id: str, request: Request, principal: Authenticated) -> Response:
    limit = _query_int(request, "limit", 100)
    cursor = request.query_params.get("cursor") or None
    return json_response(
        await _service(request).list_entries(principal.project, dataset_id, limit=limit, cursor=cursor)
    )


@router.post("/datasets/{dataset_id}/entries/from-logs")
async def create_entries_from_logs(dataset_id: str, request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, LogFilter)
    return json_response(await _service(request).add_entries_from_logs(principal.project, dataset_id, body))


@router.get("/datasets/{dataset_id}/export")
async def export_dataset(dataset_id: str, request: Request, principal: Authenticated) -> Response:
    split = _query_choice(request, "split", ("TRAIN", "TEST"), None)
    fmt = _query_choice(request, "format", ("sft", "preference"), "sft")
    lines = await _service(request).export(principal.project, dataset_id, split=split, fmt=fmt)
    filename = f"{dataset_id}-{fmt}{'-' + split.lower() if split else ''}.jsonl"
    return StreamingResponse(
        lines, media_type="application/jsonl", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
