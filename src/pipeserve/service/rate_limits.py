"""Rate limits of chat completions per key and per model: the `[[rate_limits]]` tables of the settings.

Every table that matches a request applies: its requests per minute, tokens per minute and concurrent requests
are buckets (service/rate_limit_backends.py), in Redis when `redis_url` is set (shared by every replica), else in
this process's memory. A request is admitted on the model that will generate it, before its generation starts,
only if every bucket has room; tokens are charged on an estimate first and settled at the real usage when the
completion ends, as OpenAI does. A refusal is OpenAI's 429 (`RateLimitReachedError`, or `ModelRateLimitError`
for a table with a `model`, which a fallback model may escape) with `Retry-After` and `x-ratelimit-*` headers;
an admitted request's response carries the same `x-ratelimit-*` headers.

Redis that can't be reached fails open: requests are admitted unchecked, with a warning in the log and
`pipeserve_rate_limit_backend_up 0` and `pipeserve_rate_limit_unchecked_requests_total` in `/metrics`;
Redis is tried again every `REDIS_RETRY_SECONDS`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeserve.errors import InvalidRequestError, ModelRateLimitError, RateLimitReachedError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.chat import EventStream, StreamEnd
from pipeserve.service.rate_limit_backends import LEASE_MS, Backend, Bucket, MemoryBackend, RedisBackend, Verdict
from pipeserve.settings import RateLimitRule, Settings
from pipeserve.store.db import random_hex

log = logging.getLogger("pipeserve.rate_limits")

CHARS_PER_TOKEN = 4  # the estimate of a prompt's tokens before the engine counts them
UNSET_MAX_TOKENS = 256  # the completion estimate of a request without max_tokens (settled at its real usage)
REDIS_RETRY_SECONDS = 2.0
_CONCURRENT_RETRY_MS = 1000  # a slot frees when a request ends, which nobody can foresee

T = TypeVar("T")

# The x-ratelimit-* headers of the request being answered. The service returns a completion or a stream, so
# the headers travel beside it: the route sets a dict here and the limiter fills it in (a task started for the
# request copies the context, and with it this same dict).
_response_headers: ContextVar[dict[str, str] | None] = ContextVar("rate_limit_headers", default=None)


@contextmanager
def response_headers() -> Iterator[dict[str, str]]:
    """The x-ratelimit-* headers of the request handled inside the block, once it is admitted."""
    headers: dict[str, str] = {}
    token = _response_headers.set(headers)
    try:
        yield headers
    finally:
        _response_headers.reset(token)


@dataclass(frozen=True)
class _Rule:
    config: RateLimitRule
    model_id: str | None  # the id of the model a table names (it may name an alias)
    tag: str  # names the table's buckets: the same on every replica with the same config

    def matches(self, key_id: str | None, key_name: str | None, model: str) -> bool:
        key = self.config.key
        if key not in (None, "*") and key not in (key_id, key_name):
            return False
        return self.config.model in (None, "*") or self.model_id == model

    def scope(self, key_id: str | None, model: str) -> tuple[str, str]:
        """The bucket this table counts the request in: per key and per model where it says `*`."""
        key = (key_id or "-") if self.config.key == "*" else ""
        return key, (model if self.config.model == "*" else "")

    def describe(self, key_id: str | None, model: str) -> str:
        """What the limit covers, for the 429's message ("… for SmolLM2 with key key_1a2b …")."""
        text = "all models" if self.config.model is None else model
        if self.config.key == "*":
            text += f" with key {key_id}" if key_id else " without a key"
        elif self.config.key is not None:
            text += f" with key {self.config.key}"
        return text


@dataclass(frozen=True)
class _Charge:
    bucket: Bucket
    rule: _Rule


class RateLimiter:
    def __init__(
        self,
        rules: Sequence[RateLimitRule],
        backend: Backend,
        *,
        model_ids: dict[str, str] | None = None,
        key_name: Callable[[str], str | None] = lambda _: None,
        shared: bool = False,
    ) -> None:
        """`model_ids`: served names (ids and aliases) to model ids; `key_name`: a key id's name, or None."""
        ids = model_ids or {}
        self._rules = [
            _Rule(rule, ids.get(rule.model, rule.model) if rule.model not in (None, "*") else None, _tag(rule, ids))
            for rule in rules
        ]
        self._backend = backend
        self._key_name = key_name
        # Only a table naming one key may name it by its name: else the name is never looked up (it reads the
        # key file, on every request).
        self._names_keys = any(rule.config.key not in (None, "*") for rule in self._rules)
        self._shared = shared  # a backend that can fail (Redis): fail open
        self._up = True
        self._retry_at = 0.0
        self.unchecked = 0
        self._held: weakref.WeakSet[Ticket] = weakref.WeakSet()
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, key_name: Callable[[str], str | None]) -> RateLimiter:
        model_ids = {name: model.id for model in settings.models for name in (model.id, *model.aliases)}
        backend: Backend = MemoryBackend()
        if settings.redis_url and settings.rate_limits:
            backend = RedisBackend(
                settings.redis_url, prefix=settings.redis_key_prefix + "rl:", timeout=settings.redis_timeout_seconds
            )
        return cls(
            settings.rate_limits,
            backend,
            model_ids=model_ids,
            key_name=key_name,
            shared=isinstance(backend, RedisBackend),
        )

    @classmethod
    def off(cls) -> RateLimiter:
        return cls([], MemoryBackend())

    @property
    def up(self) -> bool:
        return self._up

    def start(self) -> None:
        if any(rule.config.concurrent_requests for rule in self._rules):
            self._refresher = asyncio.create_task(self._refresh_leases(), name="rate-limit-leases")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        await self._backend.close()

    def collector(self) -> Collector:
        return _Collector(self)

    async def admit(self, key_id: str | None, model: str, params: ChatParams) -> Ticket:
        """Admit a request of `key_id` to `model` (a served model's id), or raise the 429 of a limit reached."""
        key_name = self._key_name(key_id) if key_id and self._names_keys else None
        charges = self._charges(key_id, key_name, model, params)
        ticket = Ticket(self, [c.bucket for c in charges if c.bucket.kind == "tokens"], random_hex())
        if not charges:
            return ticket
        _refuse_too_large(charges, key_id, model)
        verdicts = await self._fail_open(self._backend.admit([c.bucket for c in charges], ticket.lease))
        if verdicts is None:
            ticket.tokens = []
            return ticket
        headers = _headers(charges, verdicts)
        if not all(verdict.allowed for verdict in verdicts):
            raise _refusal(charges, verdicts, headers, key_id, model)
        ticket.leases = [c.bucket.key for c in charges if c.bucket.kind == "concurrent"]
        if ticket.leases:
            self._held.add(ticket)
        target = _response_headers.get()
        if target is not None:
            target.clear()  # a fallback's admission replaces an earlier model's
            target.update(headers)
        return ticket

    def _charges(self, key_id: str | None, key_name: str | None, model: str, params: ChatParams) -> list[_Charge]:
        charges: list[_Charge] = []
        tokens = 0
        for rule in self._rules:
            if not rule.matches(key_id, key_name, model):
                continue
            key_part, model_part = rule.scope(key_id, model)
            name = f"{rule.tag}:{key_part}:{model_part}"
            limits: list[tuple[Literal["requests", "tokens", "concurrent"], int | None]] = [
                ("requests", rule.config.requests_per_minute),
                ("tokens", rule.config.tokens_per_minute),
                ("concurrent", rule.config.concurrent_requests),
            ]
            for kind, limit in limits:
                if limit is None:
                    continue
                if kind == "tokens":
                    tokens = tokens or estimate_tokens(params)
                cost = tokens if kind == "tokens" else 1
                charges.append(_Charge(Bucket(f"{kind}:{name}", kind, limit, cost), rule))
        return charges

    async def _fail_open(self, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None while Redis can't be reached (the request then goes unchecked)."""
        if not self._shared:
            return await work
        if not self._up and time.monotonic() < self._retry_at:
            _discard(work)
            self.unchecked += 1
            return None
        try:
            result = await work
        except Exception as exc:  # redis-py's errors, OSError, timeouts: all mean "can't count now"
            if self._up:
                log.warning(
                    "rate limits: Redis can't be reached (%s); admitting requests unchecked until it is back "
                    "(retrying every %.0f s)",
                    exc,
                    REDIS_RETRY_SECONDS,
                )
            self._up = False
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            self.unchecked += 1
            return None
        if not self._up:
            log.warning("rate limits: Redis is back; limits are enforced again")
            self._up = True
        return result

    async def _quietly(self, work: Awaitable[None]) -> None:
        """Settle, release or refresh: nothing to tell a client if Redis is away (its leases expire)."""
        if self._shared and not self._up:
            _discard(work)
            return
        try:
            await work
        except Exception:
            log.debug("rate limits: a counter update was lost", exc_info=True)

    async def _refresh_leases(self) -> None:
        while True:
            await asyncio.sleep(LEASE_MS / 3000)
            leases = [(key, ticket.lease) for ticket in list(self._held) for key in ticket.leases]
            if leases:
                await self._quietly(self._backend.refresh(leases))


class Ticket:
    """An admitted request: settles its tokens at the real usage and releases its concurrency slots."""

    def __init__(self, limiter: RateLimiter, tokens: list[Bucket], lease: str) -> None:
        self._limiter = limiter
        self.tokens = tokens  # its tokens buckets, each charged the estimate (`cost`)
        self.lease = lease
        self.leases: list[str] = []  # its concurrency buckets
        self._settled = False

    async def completing(self, work: Awaitable[wire.ChatCompletion]) -> wire.ChatCompletion:
        """Run a plain completion's generation under this ticket."""
        try:
            completion = await work
        except InvalidRequestError:
            await self.settle(0)  # refused before generating: its tokens are given back
            raise
        finally:
            await self.release()
        await self.settle(completion.usage.total_tokens)
        return completion

    async def streaming(self, work: Awaitable[EventStream]) -> EventStream:
        """Start a stream under this ticket: its slots are held until the stream is closed."""
        try:
            stream = await work
        except BaseException as error:
            if isinstance(error, InvalidRequestError):
                await self.settle(0)
            await self.release()
            raise
        return _HeldStream(stream, self) if self.leases else stream

    def settling(self, on_end: StreamEnd) -> StreamEnd:
        """A stream's end callback that settles the tokens first (a failed stream keeps its estimate)."""

        async def settle_then(completion: wire.ChatCompletion | None, error: Any) -> None:
            if completion is not None:
                await self.settle(completion.usage.total_tokens)
            await on_end(completion, error)

        return settle_then

    async def settle(self, total_tokens: int) -> None:
        if self._settled:
            return
        self._settled = True
        changes = [Bucket(b.key, b.kind, b.limit, total_tokens - b.cost) for b in self.tokens if total_tokens != b.cost]
        if changes:
            await self._limiter._quietly(self._limiter._backend.settle(changes))

    async def release(self) -> None:
        leases, self.leases = self.leases, []
        if leases:
            self._limiter._held.discard(self)
            await self._limiter._quietly(self._limiter._backend.release(leases, self.lease))


class _HeldStream(EventStream):
    """A stream whose request holds concurrency slots until it is closed (the route always closes it).
    Every method of `EventStream` is delegated, so its own state is not used."""

    def __init__(self, inner: EventStream, ticket: Ticket) -> None:
        self._inner = inner
        self._ticket = ticket

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._ticket.release()


def estimate_tokens(params: ChatParams) -> int:
    """Prompt and completion tokens a request may use, before the engine counts them: the characters of its
    messages and tools over four, four tokens per message for its template, and `max_tokens` times `n`."""
    chars = sum(
        len(m.content) + len(m.reasoning or "") + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
        for m in params.messages
    )
    chars += sum(len(t.name) + len(t.description or "") + len(str(t.parameters)) for t in params.tools)
    completion = params.max_tokens if params.max_tokens is not None else UNSET_MAX_TOKENS
    return math.ceil(chars / CHARS_PER_TOKEN) + 4 * len(params.messages) + params.n * completion


def go_duration(ms: int) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers and messages write it (Go's): `644ms`, `9.816s`,
    `6m0s`."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{seconds}s"


def _tag(rule: RateLimitRule, model_ids: dict[str, str]) -> str:
    model = model_ids.get(rule.model, rule.model) if rule.model else None
    return hashlib.sha256(repr((rule.key, model)).encode()).hexdigest()[:12]


def _discard(work: Awaitable[Any]) -> None:
    if asyncio.iscoroutine(work):
        work.close()  # never awaited: close it so that Python doesn't warn


def _headers(charges: Sequence[_Charge], verdicts: Sequence[Verdict]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* trios, for requests and for tokens: of the bucket closest to its limit."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        pairs = [(c.bucket, v) for c, v in zip(charges, verdicts, strict=True) if c.bucket.kind == kind]
        if not pairs:
            continue
        bucket, verdict = min(pairs, key=lambda pair: (pair[1].remaining, pair[0].limit))
        headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(verdict.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(verdict.reset_ms)
    return headers


def _error(
    rule: _Rule, message: str, kind: Literal["requests", "tokens"], retry_ms: int, headers: dict[str, str]
) -> RateLimitReachedError:
    cls = ModelRateLimitError if rule.config.model is not None else RateLimitReachedError
    return cls(message, kind=kind, retry_after_ms=retry_ms, headers=headers)


def _refuse_too_large(charges: Sequence[_Charge], key_id: str | None, model: str) -> None:
    """A request whose estimate is beyond a tokens-per-minute limit never fits: OpenAI's "Request too large"."""
    for charge in charges:
        bucket = charge.bucket
        if bucket.kind == "tokens" and bucket.cost > bucket.limit:
            message = (
                f"Request too large for {charge.rule.describe(key_id, model)} on tokens per min (TPM): Limit "
                f"{bucket.limit}, Requested {bucket.cost}. The input or output tokens must be reduced in order to "
                "run successfully (the request counts `max_tokens` times `n`, or 256 times `n` when unset)."
            )
            raise _error(charge.rule, message, "tokens", 60_000, {})


def _refusal(
    charges: Sequence[_Charge], verdicts: Sequence[Verdict], headers: dict[str, str], key_id: str | None, model: str
) -> RateLimitReachedError:
    """The 429 of the refusing bucket that frees last (all must admit the request)."""

    def retry(verdict: Verdict, bucket: Bucket) -> int:
        return _CONCURRENT_RETRY_MS if bucket.kind == "concurrent" else max(1, verdict.retry_ms)

    refused = [(c, v) for c, v in zip(charges, verdicts, strict=True) if not v.allowed]
    charge, verdict = max(refused, key=lambda pair: retry(pair[1], pair[0].bucket))
    bucket, what = charge.bucket, charge.rule.describe(key_id, model)
    wait = retry(verdict, bucket)
    if bucket.kind == "concurrent":
        message = (
            f"Rate limit reached for {what} on concurrent requests: Limit {bucket.limit}, Used {verdict.used}, "
            "Requested 1. Please try again when one of them has finished."
        )
        return _error(charge.rule, message, "requests", wait, headers)
    unit = "requests per min (RPM)" if bucket.kind == "requests" else "tokens per min (TPM)"
    message = (
        f"Rate limit reached for {what} on {unit}: Limit {bucket.limit}, Used {verdict.used}, Requested "
        f"{bucket.cost}. Please try again in {go_duration(wait)}."
    )
    return _error(charge.rule, message, bucket.kind, wait, headers)


class _Collector(Collector):
    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "pipeserve_rate_limit_backend_up",
            "1 while rate limits can be counted (always, without redis_url); 0 while Redis can't be reached.",
        )
        up.add_metric([], 1 if self.limiter.up else 0)
        unchecked = CounterMetricFamily(
            "pipeserve_rate_limit_unchecked_requests",
            "Requests admitted without a rate limit check because Redis could not be reached (fail open).",
        )
        unchecked.add_metric([], self.limiter.unchecked)
        yield from (up, unchecked)
