"""`POST /chat/completions`."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeserve.errors import PipeserveError
from pipeserve.protocol.chat_completions import ChatCompletion
from pipeserve.server.auth import Authenticated
from pipeserve.server.body import read_json
from pipeserve.service.completions import ChatCompletions
from pipeserve.service.metrics import Metrics

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions")
async def chat_completions(request: Request, principal: Authenticated) -> Response:
    metrics: Metrics = request.app.state.metrics
    label = "unknown"
    try:
        body = await read_json(request)
        if isinstance(body.get("model"), str):
            label = _label(request, body["model"])
        service: ChatCompletions = request.app.state.completions
        # A stream's generation starts before the first byte, so that a bad request is a plain 4xx rather
        # than an error event; a plain answer is abandoned (its sequences freed) if the client leaves.
        work = service.handle(body, request.headers, principal.project, principal.key_id)
        result = await (work if body.get("stream") is True else _unless_disconnected(request, work))
        if isinstance(result, ChatCompletion):
            response: Response = Response(result.model_dump_json(), media_type="application/json")
        else:
            response = StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)
    except PipeserveError as error:
        metrics.requests.labels(label, str(error.status_code)).inc()
        raise
    metrics.requests.labels(label, "200").inc()
    return response


def _label(request: Request, model: str) -> str:
    try:
        return str(request.app.state.models.resolve(model).config.id)
    except PipeserveError:
        return "unknown"


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Run `work`, cancelling it (and so freeing its sequences) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    return await task


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
