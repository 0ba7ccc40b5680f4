"""`POST /chat/completions`."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeserve.errors import PipeserveError
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.server.auth import require_key
from pipeserve.server.body import parse_body
from pipeserve.service.chat import ChatService
from pipeserve.service.edge import to_params
from pipeserve.service.metrics import Metrics

router = APIRouter(dependencies=[Depends(require_key)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    label = "unknown"
    try:
        params = to_params(await parse_body(request, ChatCompletionRequest))
        label = request.app.state.models.resolve(params.model).config.id
        service: ChatService = request.app.state.chat
        if params.stream:
            # Starts the generation first, so that a bad request is a plain 4xx rather than an error event.
            stream = await service.stream(params)
            response: Response = StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        else:
            completion = await _unless_disconnected(request, service.complete(params))
            response = Response(completion.model_dump_json(), media_type="application/json")
    except PipeserveError as error:
        metrics.requests.labels(label, str(error.status_code)).inc()
        raise
    metrics.requests.labels(label, "200").inc()
    return response


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
