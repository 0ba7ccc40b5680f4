"""From an upstream's HTTP answer (or its absence) to pipeserve's error hierarchy.

A 4xx keeps the upstream's message, `param` and `code`: the client's request was refused and it must see why.
401/403 mean *pipeserve's* credentials are wrong, so the client gets a 502 naming the environment variable
to check. Everything else the client can't fix is a 502 (or a 504 for a timeout). Never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeserve.errors import (
    ConflictError,
    ContextLengthExceededError,
    InvalidRequestError,
    NotFoundError,
    PipeserveError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamAuthenticationError,
    UpstreamError,
    UpstreamTimeoutError,
)
from pipeserve.upstream.http import ConnectFailed, ConnectionDropped, ConnectTimeout, ReadTimeout
from pipeserve.upstream.retry import parse_retry_after

_QUOTED_CHARS = 500  # of an upstream's error text quoted in a 5xx message: enough to diagnose, not a dump


@dataclass(frozen=True, slots=True)
class UpstreamContext:
    """Who was asked, for messages: the served model's id, the upstream's redacted URL, the key's env var.
    `secrets` (the key) are scrubbed from any upstream text quoted in a message: some upstreams echo the key
    they refused."""

    model: str
    upstream: str
    key_env: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


class UpstreamFailure(Exception):
    """One failed attempt at an upstream, classified: the error a client would see, whether another attempt
    may succeed, whether it counts against the replica's circuit breaker, and how long the upstream asked
    us to wait (`Retry-After`, seconds)."""

    def __init__(
        self,
        error: PipeserveError,
        *,
        retryable: bool,
        replica_fault: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.replica_fault = replica_fault
        self.retry_after = retry_after


def error_fields(payload: Any) -> tuple[str | None, str | None, str | None]:
    """(message, param, code) of an error body in any of the shapes upstreams use: OpenAI's
    `{"error": {...}}`, vLLM's `{"object": "error", "message", "code": 400}`, `{"error": "text"}`,
    FastAPI's `{"detail": ...}`, Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    if not isinstance(payload, dict):
        return None, None, None
    inner = payload.get("error")
    if isinstance(inner, str):
        return inner, None, None
    source = inner if isinstance(inner, dict) else payload
    message = source.get("message")
    if message is None and "detail" in source:
        message = source["detail"] if isinstance(source["detail"], str) else json.dumps(source["detail"])
    param, code = source.get("param"), source.get("code")
    return (
        str(message) if message is not None else None,
        param if isinstance(param, str) else None,
        code if isinstance(code, str) else None,  # vLLM puts the HTTP status here, as a number
    )


def _body_fields(body: bytes) -> tuple[str, str | None, str | None]:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        message, param, code = error_fields(json.loads(text))
    except ValueError:
        message, param, code = None, None, None
    return (message or text[:_QUOTED_CHARS] or "(empty body)"), param, code


def failure_from_status(
    status: int, body: bytes, headers: Mapping[str, str], context: UpstreamContext
) -> UpstreamFailure:
    """The failure an upstream's non-2xx answer stands for."""
    message, param, code = _body_fields(body)
    message = context.scrub(message)
    retry_after = parse_retry_after(headers.get("retry-after"))
    where = f"the upstream {context.upstream} (model {context.model!r})"
    if status in (401, 403):
        if context.key_env:
            fix = f"check the API key in the environment variable {context.key_env} (the model's `api_key_env`)"
        else:
            fix = "set the model's `api_key_env` to the name of an environment variable holding its API key"
        error: PipeserveError = UpstreamAuthenticationError(
            f"{where} refused pipeserve's credentials (HTTP {status}: {message[:_QUOTED_CHARS]}); {fix}."
        )
        return UpstreamFailure(error, retryable=False, replica_fault=False)
    if status == 429:
        seconds = max(1, round(retry_after)) if retry_after is not None else 1
        error = RateLimitError(message, retry_after=seconds)
        return UpstreamFailure(error, retryable=True, replica_fault=False, retry_after=retry_after)
    if status in (408, 504):
        error = UpstreamTimeoutError(f"{where} timed out (HTTP {status}: {message[:_QUOTED_CHARS]}); retry later.")
        return UpstreamFailure(error, retryable=True, replica_fault=True, retry_after=retry_after)
    if status in (400, 422):
        if code == "context_length_exceeded" or "maximum context length" in message:
            error = ContextLengthExceededError(message, param=param or "messages", code=code)
        else:
            error = InvalidRequestError(message, param=param, code=code)
        return UpstreamFailure(error, retryable=False, replica_fault=False)
    client_errors: dict[int, type[PipeserveError]] = {
        404: NotFoundError,
        409: ConflictError,
        413: RequestTooLargeError,
    }
    if status in client_errors:
        error = client_errors[status](message, param=param, code=code)
        return UpstreamFailure(error, retryable=False, replica_fault=False)
    retryable = status >= 500 and status not in (501, 505)
    error = UpstreamError(f"{where} answered HTTP {status}: {message[:_QUOTED_CHARS]}")
    # Another 4xx (402, 405, 415, ...) is a misconfiguration of pipeserve's upstream, not the client's fault.
    return UpstreamFailure(error, retryable=retryable, replica_fault=status >= 500, retry_after=retry_after)


def failure_from_exception(exc: BaseException, context: UpstreamContext) -> UpstreamFailure:
    """The failure a transport error (`pipeserve.upstream.http`) stands for. Timeouts are 504s; the rest 502s."""
    where = f"the upstream {context.upstream} (model {context.model!r})"
    if isinstance(exc, ConnectTimeout):
        error: PipeserveError = UpstreamTimeoutError(f"Connecting to {where} timed out; is it up?")
        return UpstreamFailure(error, retryable=True, replica_fault=True)
    if isinstance(exc, ReadTimeout):
        error = UpstreamTimeoutError(
            f"{where} sent nothing for longer than the read timeout; retry later, or raise the model's `read_timeout`."
        )
        return UpstreamFailure(error, retryable=False, replica_fault=True)
    if isinstance(exc, ConnectFailed):
        error = UpstreamError(f"Could not connect to {where}: {_reason(exc)}; is it running?")
        return UpstreamFailure(error, retryable=True, replica_fault=True)
    if isinstance(exc, ConnectionDropped):
        error = UpstreamError(f"{where} dropped the connection: {_reason(exc)}")
        return UpstreamFailure(error, retryable=True, replica_fault=True)
    error = UpstreamError(f"{where} could not be used: {_reason(exc)}")
    return UpstreamFailure(error, retryable=False, replica_fault=True)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def unreadable(context: UpstreamContext, what: str) -> UpstreamFailure:
    """An answer that can't be read (malformed JSON in an event, a body that isn't an event stream)."""
    where = f"the upstream {context.upstream} (model {context.model!r})"
    error = UpstreamError(f"{where} sent an answer that can't be read: {what[:_QUOTED_CHARS]}")
    # Garbage comes back on a retry: not retried, but counted against the replica.
    return UpstreamFailure(error, retryable=False, replica_fault=True)
