"""Upstream error bodies in every shape, and statuses, to pipeserve's errors."""

from __future__ import annotations

import json

import pytest

from pipeserve.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    RateLimitError,
    UpstreamAuthenticationError,
    UpstreamError,
    UpstreamTimeoutError,
)
from pipeserve.upstream import (
    ConnectFailed,
    ConnectionDropped,
    ConnectTimeout,
    ReadTimeout,
    TransportError,
    UpstreamContext,
    error_fields,
    failure_from_exception,
    failure_from_status,
)

CONTEXT = UpstreamContext("my-model", "http://vllm:8000/v1", "VLLM_KEY")


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"error": {"message": "bad", "type": "t", "param": "n", "code": "c"}}, ("bad", "n", "c")),
        (
            {"object": "error", "message": "bad", "type": "BadRequestError", "param": None, "code": 400},
            ("bad", None, None),
        ),
        ({"error": "bad"}, ("bad", None, None)),
        ({"detail": "bad"}, ("bad", None, None)),
        ({"detail": [{"loc": ["body"], "msg": "bad"}]}, ('[{"loc": ["body"], "msg": "bad"}]', None, None)),
        ({"type": "error", "error": {"type": "overloaded_error", "message": "bad"}}, ("bad", None, None)),
        ([1, 2], (None, None, None)),
    ],
)
def test_error_fields_of_every_shape(payload: object, fields: tuple[str | None, ...]) -> None:
    assert error_fields(payload) == fields


def test_a_body_that_is_not_json_is_quoted() -> None:
    failure = failure_from_status(502, b"<html>Bad Gateway</html>", {}, CONTEXT)
    assert isinstance(failure.error, UpstreamError) and "<html>Bad Gateway</html>" in failure.error.message
    assert failure.retryable and failure.replica_fault
    assert "my-model" in failure.error.message and "http://vllm:8000/v1" in failure.error.message


def test_statuses() -> None:
    def mapped(status: int, headers: dict[str, str] | None = None) -> object:
        return failure_from_status(status, json.dumps({"error": {"message": "m"}}).encode(), headers or {}, CONTEXT)

    rate = mapped(429, {"retry-after": "7"})
    assert isinstance(rate.error, RateLimitError) and rate.error.headers["Retry-After"] == "7"  # type: ignore[attr-defined]
    assert rate.retryable and rate.retry_after == 7 and not rate.replica_fault  # type: ignore[attr-defined]
    auth = mapped(401).error  # type: ignore[attr-defined]
    assert isinstance(auth, UpstreamAuthenticationError) and "VLLM_KEY" in auth.message and auth.status_code == 502
    assert isinstance(mapped(504).error, UpstreamTimeoutError)  # type: ignore[attr-defined]
    assert not mapped(501).retryable  # type: ignore[attr-defined]
    other = mapped(405)
    assert isinstance(other.error, UpstreamError) and not other.retryable  # type: ignore[attr-defined]
    context = failure_from_status(
        400, json.dumps({"error": {"message": "x", "code": "context_length_exceeded"}}).encode(), {}, CONTEXT
    )
    assert isinstance(context.error, ContextLengthExceededError) and context.error.code == "context_length_exceeded"
    assert isinstance(failure_from_status(422, b"{}", {}, CONTEXT).error, InvalidRequestError)


def test_transport_exceptions() -> None:
    connect = failure_from_exception(ConnectFailed("refused"), CONTEXT)
    assert isinstance(connect.error, UpstreamError) and connect.retryable
    read = failure_from_exception(ReadTimeout("slow"), CONTEXT)
    assert isinstance(read.error, UpstreamTimeoutError) and not read.retryable and "read_timeout" in read.error.message
    assert failure_from_exception(ConnectTimeout("slow"), CONTEXT).retryable
    dropped = failure_from_exception(ConnectionDropped("peer closed"), CONTEXT)
    assert "dropped the connection" in dropped.error.message and dropped.retryable
    other = failure_from_exception(TransportError("odd"), CONTEXT)
    assert isinstance(other.error, UpstreamError) and not other.retryable
