"""The Requests pages: the log, filtered and paged as `GET /v1/logs` pages it, and one request in full."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.console import store
from pipeserve.console.filters import PAGE_SIZES, ConsoleFilter, page_size, parse_filter
from pipeserve.console.transcript import pretty, preview, transcript
from pipeserve.console.web import ConsoleRoute, Signed, is_fragment, render
from pipeserve.errors import InvalidRequestError, NotFoundError
from pipeserve.service import logs as service
from pipeserve.service.datasets import DatasetService
from pipeserve.service.models import ModelRegistry
from pipeserve.store.db import Database

router = APIRouter(route_class=ConsoleRoute)


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    return params


def _model_names(request: Request) -> list[str]:
    registry: ModelRegistry = request.app.state.models
    return [name for served in registry for name in (served.config.id, *served.config.aliases)]


@router.get("/")
async def log_page(request: Request, viewer: Signed) -> Response:
    db: Database = request.app.state.db
    params = _params(request)
    limit = page_size(params)
    cursor = request.query_params.get("cursor") or None
    try:
        flt = parse_filter(params)
        page = await service.list_logs(
            db, viewer.project, service.ListQuery(filter=flt.log_filter, limit=limit, cursor=cursor)
        )
    except InvalidRequestError as error:
        # The filter as typed stays in the form, with what to fix, rather than an error page.
        raw = {name: values for name, values in params.items() if name not in ("cursor", "limit")}
        context = {
            "filter": ConsoleFilter(raw=raw),
            "error": error.message,
            "rows": [],
            "next_url": None,
            "first_page": True,
        }
        return render(request, "requests.html", _page_context(request, context, limit), status_code=400)
    scores = await store.judgements(db, [log.id for log in page.data], first_choice=True)
    rows = [{"log": log, "preview": preview(log.request), "scores": scores.get(log.id, [])} for log in page.data]
    query = flt.query(limit=str(limit) if limit != 50 else None, cursor=page.next_cursor)
    context = {
        "filter": flt,
        "rows": rows,
        "next_url": f"/?{query}" if page.next_cursor else None,
        "first_page": cursor is None,
        "error": None,
    }
    if is_fragment(request) and request.query_params.get("fragment") == "rows":
        return render(request, "_log_rows.html", context)
    return render(
        request, "requests.html", await _with_datasets(request, viewer.project, _page_context(request, context, limit))
    )


def _page_context(request: Request, context: dict[str, object], limit: int) -> dict[str, object]:
    return {**context, "limit": limit, "page_sizes": PAGE_SIZES, "models": _model_names(request), "datasets": []}


async def _with_datasets(request: Request, project: str, context: dict[str, object]) -> dict[str, object]:
    """The datasets a filter can add its logs to."""
    found = await DatasetService(request.app.state.db).list_datasets(project)
    return {**context, "datasets": found.data}


@router.get("/requests/{log_id}")
async def request_page(log_id: str, request: Request, viewer: Signed) -> Response:
    db: Database = request.app.state.db
    log = await service.get_log(db, viewer.project, log_id)
    if log is None:
        raise NotFoundError(f"No request '{log_id}' in this project. The log lists the requests you can open.")
    judged = (await store.judgements(db, [log.id])).get(log.id, [])
    context = {
        "log": log,
        "transcript": transcript(log.request, log.response),
        "judgements": judged,
        "raw_request": pretty(log.request),
        "raw_response": pretty(log.response),
        "metadata": sorted(log.metadata.items()),
    }
    return render(request, "request.html", context)
