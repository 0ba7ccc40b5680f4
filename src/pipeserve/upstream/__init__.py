"""Shared machinery of remote engines (OpenAI-compatible servers, Anthropic): HTTP client, error mapping,
retries, replicas, admission, server-sent events. Engines compose these; nothing here knows a wire format
beyond error bodies and SSE framing.

API
---
`http`
    `Timeouts(connect=5.0, read=120.0, total=600.0)`; `make_client(timeouts, *, max_connections=None,
    headers=None) -> HttpClient` (aiohttp underneath; no redirects; `total` is enforced by the engine, e.g.
    with `asyncio.timeout_at`, over retries and the whole streamed answer). `await client.request(method, url,
    *, body=None, headers=None, read_timeout=None) -> Response` (`.status`, `.headers`, `await .read()`,
    `.lines()`, `await .close(drain=0.0)`, `.release_if_read()`), `await client.close()`. Failures raise
    `TransportError`: `ConnectTimeout`, `ReadTimeout`, `ConnectFailed`, `ConnectionDropped`.
`errors`
    `UpstreamContext(model, upstream, key_env=None, secrets=())`: what messages name (the redacted URL, never
    the key); `.scrub(text)` removes `secrets` from upstream text quoted in a message (done by the functions here).
    `UpstreamFailure(error, *, retryable, replica_fault, retry_after=None)`: one failed attempt, classified.
    `failure_from_status(status, body: bytes, headers, context)`: 400/422 -> InvalidRequestError (or
    ContextLengthExceededError), 404 -> NotFoundError, 409 -> ConflictError, 413 -> RequestTooLargeError,
    each keeping the upstream's message, param and code; 429 -> RateLimitError with `Retry-After` (retryable);
    401/403 -> UpstreamAuthenticationError (502, names `api_key_env`); 408/504 -> UpstreamTimeoutError;
    other 5xx -> UpstreamError (retryable but 501/505); other 4xx -> UpstreamError.
    `failure_from_exception(exc, context)`: transport timeouts -> 504 (a connect timeout retryable), refused
    connections and dropped connections -> 502 (retryable), anything else -> 502.
    `unreadable(context, what)`: a 502 for an answer that can't be parsed (not retried).
    `error_fields(payload) -> (message, param, code)` from any upstream's error JSON (also for error events
    inside a 200 stream).
`retry`
    `RetryPolicy(max_attempts=3, base_delay=0.25, max_delay=8.0)`: `.delay(retry, retry_after)` is
    exponential backoff with full jitter, at least `retry_after`. `parse_retry_after(header)` reads seconds
    or an HTTP date. `await with_retries(pool, policy, attempt, *, deadline, affinity=None) -> (result,
    lease)`: runs `attempt(lease)` (which returns once the answer's first content is read, or raises
    `UpstreamFailure`) on replicas chosen by the pool, retrying retryable failures while attempts and the
    deadline (`time.monotonic()`) allow, preferring a replica not yet tried; returns the still-open lease.
`replicas`
    `ReplicaPool(model, urls, *, breaker_threshold=5, breaker_cooldown=30.0, affinity_slack=4)`:
    `.choose(affinity, avoid=()) -> Replica | None` (rendezvous hashing on the affinity key; least
    outstanding when the affine replica is `affinity_slack` busier or when there is no key), `.lease(replica)
    -> Lease`, `.problem() -> str | None` (None while a replica is usable), `.snapshot() -> list[dict]`
    (url, outstanding, requests, failures, breaker, healthy, last_error), `await .check_health(probe)`,
    `.start_health_checks(probe, interval)`, `await .stop_health_checks()` (`probe(replica)` raises when
    unhealthy). `Lease`: `.url`, `.replica`, `.succeeded()`, `.failed(reason)` (counts against the breaker),
    `.close()` (idempotent). `CircuitBreaker(threshold, cooldown)`: closed -> open after `threshold`
    consecutive failures -> half-open (one trial) after `cooldown`. `affinity_key(text, prefix_chars)`,
    `redact_url(url)`.
`admission`
    `Admission(model, max_concurrent, max_waiting)`: `await .acquire()` (429 when `max_waiting` wait
    already), `.release()`, `.running`, `.waiting`.
`sse`
    `sse_events(response.lines()) -> AsyncIterator[ServerSentEvent(event, data)]`.
"""

from __future__ import annotations

from pipeserve.upstream.admission import Admission
from pipeserve.upstream.errors import (
    UpstreamContext,
    UpstreamFailure,
    error_fields,
    failure_from_exception,
    failure_from_status,
    unreadable,
)
from pipeserve.upstream.http import (
    ConnectFailed,
    ConnectionDropped,
    ConnectTimeout,
    HttpClient,
    ReadTimeout,
    Response,
    Timeouts,
    TransportError,
    make_client,
)
from pipeserve.upstream.replicas import CircuitBreaker, Lease, Replica, ReplicaPool, affinity_key, redact_url
from pipeserve.upstream.retry import RetryPolicy, parse_retry_after, with_retries
from pipeserve.upstream.sse import ServerSentEvent, sse_events

__all__ = [
    "Admission",
    "CircuitBreaker",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionDropped",
    "HttpClient",
    "Lease",
    "ReadTimeout",
    "Replica",
    "ReplicaPool",
    "Response",
    "RetryPolicy",
    "ServerSentEvent",
    "Timeouts",
    "TransportError",
    "UpstreamContext",
    "UpstreamFailure",
    "affinity_key",
    "error_fields",
    "failure_from_exception",
    "failure_from_status",
    "make_client",
    "parse_retry_after",
    "redact_url",
    "sse_events",
    "unreadable",
    "with_retries",
]
