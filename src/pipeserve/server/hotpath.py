"""`POST /chat/completions` straight from the ASGI entry point, past the framework's middleware stack, routing
and dependency injection.

Every completion passes through here, and in front of a fast upstream the framework was a tenth of a
request's CPU (bench/gateway.py, concurrency 1: ServerErrorMiddleware, ExceptionMiddleware, the exit-stack
and body-limit middlewares, two routers, the dependency solver). The route's own code runs unchanged: the
same authentication, the same endpoint function, and errors rendered by the handlers the app registered, so
that the answer is byte for byte the one the routed path gives (which still serves a path with a root_path
prefix, and is what OpenAPI describes).
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pipeserve.server.access_log import AccessLog
from pipeserve.server.auth import require_key
from pipeserve.server.routes.chat import chat_completions


class PipeserveApp(FastAPI):
    def __init__(self, *args: Any, hot_paths: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_paths = hot_paths  # the paths of `POST /chat/completions`, under each API prefix
        self.access_log: AccessLog | None = None  # set by `pipeserve serve` in place of uvicorn's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.access_log is not None and scope["type"] == "http":
            send = self.access_log.watch(scope, send)
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.hot_paths:
            scope["app"] = self  # as Starlette sets it: `request.app` is how the route finds the services
            request = Request(scope, receive)
            try:
                response = await chat_completions(request, await require_key(request))
            except Exception as exc:
                response = await self._render(request, exc)
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _render(self, request: Request, exc: Exception) -> Response:
        """The response of the handler registered for `exc`'s class (the nearest in its MRO), as Starlette's
        exception middlewares choose it; the handler for `Exception` logs what is unexpected."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                response = handler(request, exc)  # ours are all coroutines
                if inspect.isawaitable(response):
                    response = await response
                assert isinstance(response, Response)
                return response
        raise exc
