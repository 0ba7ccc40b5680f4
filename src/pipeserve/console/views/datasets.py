"""The Datasets pages: list and create, make one from the log's filter, entries (view, edit, delete), export."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeserve.console import store
from pipeserve.console.filters import parse_filter
from pipeserve.console.transcript import pretty, preview
from pipeserve.console.web import ConsoleRoute, Signed, field, read_form, redirect, render
from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.datasets import CreateDatasetRequest, DatasetEntry, Split
from pipeserve.service.datasets import DatasetService
from pipeserve.validation import validate

router = APIRouter(route_class=ConsoleRoute)

ENTRIES_PAGE = 50


def _service(request: Request) -> DatasetService:
    return DatasetService(request.app.state.db)


def _split(text: str) -> Split | None:
    value = text.strip().upper()
    if value in ("", "AUTO"):
        return None
    if value not in ("TRAIN", "TEST"):
        raise InvalidRequestError(f"Invalid split {text!r}: choose TRAIN, TEST or automatic.", param="split")
    return "TRAIN" if value == "TRAIN" else "TEST"


def _answer(entry: DatasetEntry) -> str:
    last = entry.messages[-1] if entry.messages else {}
    content = last.get("content")
    if isinstance(content, str):
        text = " ".join(content.split())
    elif last.get("tool_calls"):
        text = "(tool calls) " + ", ".join(str(c.get("function", {}).get("name", "")) for c in last["tool_calls"])
    else:
        text = ""
    return text if len(text) <= 120 else text[:119] + "…"


@router.get("/datasets")
async def datasets_page(request: Request, viewer: Signed) -> Response:
    found = await _service(request).list_datasets(viewer.project)
    return render(request, "datasets.html", {"datasets": found.data})


@router.post("/datasets")
async def create_dataset(request: Request, viewer: Signed) -> Response:
    form = await read_form(request)
    body = validate(CreateDatasetRequest, {"name": field(form, "name").strip()})
    dataset = await _service(request).create_dataset(viewer.project, body)
    return redirect(f"/datasets/{dataset.id}")


@router.post("/datasets/from-logs")
async def dataset_from_logs(request: Request, viewer: Signed) -> Response:
    """The logs that the log page's filter shows (its successful chat completions) into a new or existing
    dataset, as `POST /v1/datasets/{id}/entries/from-logs` adds them."""
    form = await read_form(request)
    flt = parse_filter(parse_qs(field(form, "filter"), keep_blank_values=False))
    limit_text = field(form, "limit").strip()
    if limit_text and not limit_text.isdigit():
        raise InvalidRequestError(f"Invalid limit {limit_text!r}: give a whole number of logs.", param="limit")
    wanted = flt.for_dataset(limit=int(limit_text) if limit_text else None, split=_split(field(form, "split")))
    service = _service(request)
    dataset_id = field(form, "dataset").strip()
    if not dataset_id:
        name = field(form, "name").strip()
        dataset_id = (await service.create_dataset(viewer.project, validate(CreateDatasetRequest, {"name": name}))).id
    result = await service.add_entries_from_logs(viewer.project, dataset_id, wanted)
    outcome = {"added": result.entries_created, "skipped": result.skipped, "failed": len(result.errors.data)}
    return redirect(f"/datasets/{dataset_id}?{urlencode(outcome)}")


@router.get("/datasets/{dataset_id}")
async def dataset_page(dataset_id: str, request: Request, viewer: Signed) -> Response:
    service = _service(request)
    dataset = await service.get_dataset(viewer.project, dataset_id)
    cursor = request.query_params.get("cursor") or None
    entries = await service.list_entries(viewer.project, dataset_id, limit=ENTRIES_PAGE, cursor=cursor)
    rows = [{"entry": e, "question": preview({"messages": e.messages}), "answer": _answer(e)} for e in entries.data]
    counts = {name: request.query_params.get(name) for name in ("added", "skipped", "failed")}
    context = {
        "dataset": dataset,
        "rows": rows,
        "next_url": f"/datasets/{dataset_id}?cursor={entries.next_cursor}" if entries.next_cursor else None,
        "first_page": cursor is None,
        "outcome": counts if counts["added"] is not None else None,
    }
    return render(request, "dataset.html", context)


@router.post("/datasets/{dataset_id}/delete")
async def delete_dataset(dataset_id: str, request: Request, viewer: Signed) -> Response:
    await read_form(request)
    await _service(request).delete_dataset(viewer.project, dataset_id)
    return redirect("/datasets")


@router.get("/datasets/{dataset_id}/export")
async def export_dataset(dataset_id: str, request: Request, viewer: Signed) -> Response:
    split = _split(request.query_params.get("split", ""))
    fmt = request.query_params.get("format", "sft")
    if fmt not in ("sft", "preference"):
        raise InvalidRequestError(f"Invalid format {fmt!r}: choose sft or preference.", param="format")
    lines = await _service(request).export(
        viewer.project, dataset_id, split=split, fmt="sft" if fmt == "sft" else "preference"
    )
    filename = f"{dataset_id}-{fmt}{'-' + split.lower() if split else ''}.jsonl"
    return StreamingResponse(
        lines, media_type="application/jsonl", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


def _editable(entry: DatasetEntry) -> str:
    """An entry as the JSON the edit form shows: what `POST /v1/datasets/{id}/entries` takes, but the split."""
    data = entry.model_dump(
        include={"messages", "rejected_message", "tools", "tool_choice", "response_format", "metadata"}
    )
    return pretty({key: value for key, value in data.items() if value is not None})


async def _entry_page(
    request: Request,
    viewer: Signed,
    dataset_id: str,
    entry_id: str,
    *,
    text: str | None = None,
    split: str | None = None,
    error: str | None = None,
) -> Response:
    dataset = await _service(request).get_dataset(viewer.project, dataset_id)
    entry = await store.get_entry(request.app.state.db, viewer.project, dataset_id, entry_id)
    context = {
        "dataset": dataset,
        "entry": entry,
        "text": text if text is not None else _editable(entry),
        "split": split or entry.split,
        "error": error,
    }
    return render(request, "entry.html", context, status_code=400 if error else 200)


@router.get("/datasets/{dataset_id}/entries/{entry_id}")
async def entry_page(dataset_id: str, entry_id: str, request: Request, viewer: Signed) -> Response:
    return await _entry_page(request, viewer, dataset_id, entry_id)


@router.post("/datasets/{dataset_id}/entries/{entry_id}")
async def save_entry(dataset_id: str, entry_id: str, request: Request, viewer: Signed) -> Response:
    form = await read_form(request)
    text, split_text = field(form, "entry"), field(form, "split")
    try:
        split = _split(split_text) or "TRAIN"
        try:
            raw: Any = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"The entry is not valid JSON ({exc}).") from None
        if isinstance(raw, dict):
            raw.pop("split", None)  # the split comes from its own field
        await store.update_entry(request.app.state.db, viewer.project, dataset_id, entry_id, raw, split)
    except InvalidRequestError as error:
        where = f" ({error.param})" if error.param else ""
        return await _entry_page(
            request, viewer, dataset_id, entry_id, text=text, split=split_text, error=error.message + where
        )
    return redirect(f"/datasets/{dataset_id}?saved={entry_id}")


@router.post("/datasets/{dataset_id}/entries/{entry_id}/delete")
async def delete_entry(dataset_id: str, entry_id: str, request: Request, viewer: Signed) -> Response:
    await read_form(request)
    await store.delete_entry(request.app.state.db, viewer.project, dataset_id, entry_id)
    return redirect(f"/datasets/{dataset_id}")
