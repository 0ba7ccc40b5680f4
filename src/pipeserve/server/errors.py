"""The one handler that renders every error in OpenAI's shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pipeserve.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PipeserveError,
    RequestTooLargeError,
)
from pipeserve.validation import param_path

log = logging.getLogger("pipeserve.server")


def render(error: PipeserveError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    async def on_pipeserve_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PipeserveError)
        return render(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return render(NotFoundError(f"Unknown route {request.method} {request.url.path}.", code="not_found"))
        if exc.status_code == 405:
            return render(MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}."))
        if exc.status_code == 413:
            return render(RequestTooLargeError(f"The request body is too large: {exc.detail}."))
        # Starlette raises nothing else from our routes; a client error stays a 400, anything else is ours.
        if exc.status_code < 500:
            return render(InvalidRequestError(str(exc.detail)))
        return render(PipeserveError(str(exc.detail)))

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        param = param_path(tuple(first.get("loc", ())))
        return render(InvalidRequestError(f"Invalid value for '{param}': {first.get('msg')}", param=param))

    async def on_client_disconnect(_: Request, exc: Exception) -> Response:
        # The client left while its request body was being read: nobody is there to read an answer.
        return Response(status_code=499)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return render(PipeserveError("The server had an error while processing your request. It is logged."))

    app.add_exception_handler(PipeserveError, on_pipeserve_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
