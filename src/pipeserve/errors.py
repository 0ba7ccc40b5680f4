"""The one exception hierarchy.

Every error a client can see is a `PipeserveError`, rendered by `server/errors.py` in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`. Its HTTP status and type belong to its class (never changed
on an instance), so the class says what a client sees:

    PipeserveError                      500 server_error
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── UnsupportedParameterError       a field this server or model can't honour
    │   ├── ContextLengthExceededError      prompt + completion beyond the model's context
    │   └── JudgeRejectedError              the judge model refused the judge's request
    ├── AuthenticationError             401
    ├── NotFoundError                   404
    │   └── ModelNotFoundError              OpenAI's wording, which clients match on
    ├── MethodNotAllowedError           405
    ├── ConflictError                   409
    │   └── CriterionExistsError
    ├── RequestTooLargeError            413
    ├── RateLimitError                  429 rate_limit_error, with Retry-After
    │   └── RateLimitReachedError           a `[[rate_limits]]` limit; type `requests` or `tokens`, as OpenAI's
    │       └── ModelRateLimitError             a limit of one model: another model (a fallback) may have room
    ├── EngineError                     500 the engine failed while generating
    ├── JudgeFailedError                500 the judge gave no verdict
    ├── UpstreamError                   502 upstream_error: an upstream engine failed or can't be reached
    │   └── UpstreamAuthenticationError     the upstream refused pipeserve's own credentials
    ├── EngineUnavailableError          503 a model can't serve now (restarting, stalled)
    ├── StoreUnavailableError           503 the database can't be reached now
    └── UpstreamTimeoutError            504 upstream_timeout: an upstream engine took too long

    StartupError                        not a client's error: the server refuses to start
    └── UnsafeBindError
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal


class PipeserveError(Exception):
    """Base of every error rendered to clients as `{"error": {"message", "type", "param", "code"}}`."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

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


class JudgeRejectedError(InvalidRequestError):
    """The judge model refused the judge's request (its prompt too long for it, say): nothing a retry fixes."""

    default_code = "judge_failed"


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
        # OpenAI's wording, which clients and SDK fallbacks match on; GET /v1/models lists what is served.
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class MethodNotAllowedError(PipeserveError):
    status_code = 405
    error_type = "invalid_request_error"


class ConflictError(PipeserveError):
    """409, as OpenAI answers a write that collides with an existing resource or a concurrent write."""

    status_code = 409
    error_type = "invalid_request_error"


class CriterionExistsError(ConflictError):
    default_code = "criterion_exists"


class RequestTooLargeError(PipeserveError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(PipeserveError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after)


class EngineError(PipeserveError):
    """The engine failed while generating; not the client's fault."""

    default_code = "engine_error"


class JudgeFailedError(PipeserveError):
    """A criterion's judge could not give a verdict, on an endpoint whose answer is that verdict."""

    default_code = "judge_failed"


class UpstreamError(PipeserveError):
    """An upstream engine (an OpenAI-compatible server, Anthropic) answered 5xx, refused the connection,
    dropped it, or sent what can't be read."""

    status_code = 502
    default_code = "upstream_error"


class UpstreamTimeoutError(PipeserveError):
    status_code = 504
    default_code = "upstream_timeout"


class EngineUnavailableError(PipeserveError):
    status_code = 503
    default_code = "engine_unavailable"


class StoreUnavailableError(PipeserveError):
    """The database holding logs, datasets and criteria can't be reached right now; retry later."""

    status_code = 503
    default_code = "store_unavailable"


def judge_failure(message: str, status_code: int | None) -> PipeserveError:
    """The error of an endpoint whose answer is a judge's verdict, from the status of the judge's own failure:
    a judge model that is busy or can't serve now stays a 429 or 503 (a retry may work), one no longer served a
    404, another refusal a 400, anything else a 500."""
    if status_code == 429:
        return RateLimitError(message, retry_after=1)
    if status_code == 503:
        return EngineUnavailableError(message, code="judge_failed")
    if status_code == 404:  # the judge model is no longer served
        return NotFoundError(message, code="judge_failed")
    if status_code is not None and 400 <= status_code < 500:
        return JudgeRejectedError(message)
    return JudgeFailedError(message)


class StartupError(Exception):
    """The server refuses to start; printed on the terminal, never sent to a client."""


class UnsafeBindError(StartupError):
    pass


class UpstreamAuthenticationError(UpstreamError):
    """The upstream answered 401/403: pipeserve's key for it (the model's `api_key_env`) is wrong, which the
    client can't fix, so it is a 502 and not a 401."""

    default_code = "upstream_authentication_failed"


class RateLimitReachedError(RateLimitError):
    """A `[[rate_limits]]` limit (service/rate_limits.py) refused the request. As OpenAI's, its `type` is the
    kind of limit reached, `requests` or `tokens`, and it carries `retry-after-ms` and the `x-ratelimit-*`
    headers besides `Retry-After`."""

    def __init__(
        self, message: str, *, kind: Literal["requests", "tokens"], retry_after_ms: int, headers: Mapping[str, str]
    ) -> None:
        super().__init__(message, retry_after=max(1, math.ceil(retry_after_ms / 1000)))
        self.kind = kind
        self.headers["retry-after-ms"] = str(retry_after_ms)
        self.headers.update(headers)

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["type"] = self.kind
        return body


class ModelRateLimitError(RateLimitReachedError):
    """A limit of one model (a `[[rate_limits]]` table with a `model`): another model may have room, so a
    request with fallbacks tries them before answering 429. A limit of all models together is a plain
    `RateLimitReachedError`."""
