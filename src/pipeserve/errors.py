"""The one exception hierarchy. Every error a client can see is a `PipeserveError`, rendered in OpenAI's shape."""

from __future__ import annotations

from typing import Any


class PipeserveError(Exception):
    """Base of every error rendered to clients as `{"error": {"message", "type", "param", "code"}}`."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequestError(PipeserveError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    default_code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(PipeserveError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFoundError(PipeserveError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist. GET /v1/models lists the models this server serves.",
            param="model",
        )


class MethodNotAllowedError(PipeserveError):
    status_code = 405
    error_type = "invalid_request_error"


class RateLimitError(PipeserveError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after)


class EngineError(PipeserveError):
    """The engine failed while generating; not the client's fault."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class EngineUnavailableError(PipeserveError):
    status_code = 503
    error_type = "server_error"
    default_code = "engine_unavailable"


class StoreUnavailableError(PipeserveError):
    """The database holding logs, datasets and criteria can't be reached right now; retry later."""

    status_code = 503
    error_type = "server_error"
    default_code = "store_unavailable"


class JudgeFailedError(PipeserveError):
    """A criterion's judge could not give a verdict, on an endpoint whose answer is that verdict.

    Its status is the judge's own failure: 4xx when the judge model refused the request (a prompt too long
    for it, say), 500 otherwise."""

    default_code = "judge_failed"

    def __init__(self, message: str, *, status_code: int | None) -> None:
        super().__init__(message)
        self.status_code = status_code if status_code is not None and 400 <= status_code < 600 else 500
        self.error_type = "invalid_request_error" if self.status_code < 500 else "server_error"
