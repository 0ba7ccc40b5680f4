"""The Playground: a chat with any served model, streamed, through the same pipeline as
`POST /v1/chat/completions` (rate limits, logging, metrics), in the viewer's project."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from pipeserve.console.web import ConsoleRoute, Signed, check_csrf, render
from pipeserve.errors import InvalidRequestError, PipeserveError
from pipeserve.server.body import read_json
from pipeserve.server.errors import render as render_error
from pipeserve.service.chat import EventStream
from pipeserve.service.completions import ChatCompletions
from pipeserve.service.models import ModelRegistry
from pipeserve.service.rate_limits import response_headers

router = APIRouter(route_class=ConsoleRoute)


class _Stream(StreamingResponse):
    """Server-sent events whose generation is stopped (its sequences freed) however the response ends."""

    def __init__(self, stream: EventStream, headers: dict[str, str]) -> None:
        super().__init__(stream, media_type="text/event-stream", headers={"X-Accel-Buffering": "no", **headers})
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.aclose()


@router.get("/playground")
async def playground_page(request: Request, viewer: Signed) -> Response:
    registry: ModelRegistry = request.app.state.models
    names = [served.config.id for served in registry]
    for provider in registry.providers:
        names += [f"{provider.provider}:{name}" for name in provider.engine.listed_models()]
    return render(request, "playground.html", {"models": names, "log_default": request.app.state.settings.log_requests})


@router.post("/playground/chat")
async def playground_chat(request: Request, viewer: Signed) -> Response:
    """`{"request": <a chat completion request>, "log": true|false}` → the completion (JSON or a stream),
    or an error in the API's shape for the page's script to show."""
    try:
        check_csrf(request)
        data = await read_json(request)
        body = data.get("request")
        if not isinstance(body, dict):
            raise InvalidRequestError(
                "Send {'request': <a chat completion request>, 'log': true|false}.", param="request"
            )
        headers = {"op-log-request": "true" if data.get("log") is True else "false"}
        service: ChatCompletions = request.app.state.completions
        with response_headers() as limits:
            answer = await service.handle(body, headers, viewer.project, viewer.key_id)
    except PipeserveError as error:
        return render_error(error)
    if isinstance(answer, str):
        return Response(answer, media_type="application/json", headers=limits)
    return _Stream(answer, limits)
