"""`POST /chat/completions`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from pipeserve.errors import PipeserveError
from pipeserve.server.auth import Authenticated
from pipeserve.server.body import read_json
from pipeserve.service.chat import SSE_DONE, EventStream
from pipeserve.service.completions import CLIENT_GONE, ChatCompletions
from pipeserve.service.metrics import Metrics
from pipeserve.service.rate_limits import response_headers

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

T = TypeVar("T")


class _ClientGone(Exception):
    pass


class _EventStreamResponse(StreamingResponse):
    """Server-sent events, each sent as soon as it is made; the stream is closed (its sequences freed) however
    the response ends, and a client that leaves cancels it.

    Starlette's StreamingResponse (its headers, no Content-Length) without its way of sending: under uvicorn
    (ASGI spec 2.3) that runs the body and a disconnect listener in an anyio task group, ~0.1 ms per stream
    in front of a fast upstream (bench/gateway.py). Here one watcher task cancels this one when the client
    goes, as for a plain answer."""

    def __init__(self, stream: EventStream, headers: dict[str, str]) -> None:
        super().__init__(stream, media_type="text/event-stream", headers=SSE_HEADERS | headers)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with _cancelled_if_gone(receive):
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in self.stream:
                    # `[DONE]` ends the stream: it goes out with the body's end, in one write.
                    last = chunk.endswith(SSE_DONE)
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                    if last:
                        return
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except _ClientGone:
            pass  # a client that left is no error
        finally:
            await self.stream.aclose()


@router.post("/chat/completions")
async def chat_completions(request: Request, principal: Authenticated) -> Response:
    try:
        body = await read_json(request)
    except PipeserveError as error:  # later errors are counted by the service, which knows the model
        metrics: Metrics = request.app.state.metrics
        metrics.count_request("unknown", str(error.status_code))
        raise
    service: ChatCompletions = request.app.state.completions
    # A stream's generation starts before the first byte, so that a bad request is a plain 4xx rather than an
    # error event; a plain answer is abandoned (its sequences freed) if the client leaves.
    with response_headers() as limits:  # x-ratelimit-*, filled in when the request is admitted
        work = service.handle(body, request.headers, principal.project, principal.key_id)
        try:
            answer = await (work if body.get("stream") is True else _unless_disconnected(request, work))
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
    if isinstance(answer, str):
        return Response(answer, media_type="application/json", headers=limits)
    return _EventStreamResponse(answer, limits)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work` in this task, cancelling it (and so freeing its sequences) if the client goes away first."""
    async with _cancelled_if_gone(request.receive):
        return await work


@asynccontextmanager
async def _cancelled_if_gone(receive: Receive) -> AsyncIterator[None]:
    """Run the block in this task; if the client goes away first, cancel it and raise `_ClientGone` (a cancel
    of the server's own, at shutdown, passes through).

    One watcher task that cancels this one, rather than the work in a task of its own raced against the watcher
    (asyncio.wait, or Starlette's anyio task group for a stream): a task fewer on every request."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise _ClientGone from None
        raise
    finally:
        watcher.cancel()
