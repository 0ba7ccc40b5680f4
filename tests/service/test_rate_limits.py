"""The rate limiter on both backends: this process's memory, and the real Redis (127.0.0.1:6379, keys under a
prefix of their own per test)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import pytest

from pipeserve.errors import InvalidRequestError, ModelRateLimitError, RateLimitReachedError
from pipeserve.params import ChatMessage, ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service import rate_limit_backends
from pipeserve.service.chat import EventStream
from pipeserve.service.rate_limit_backends import PERIOD_MS, Backend, MemoryBackend, RedisBackend
from pipeserve.service.rate_limits import RateLimiter, Ticket, estimate_tokens, go_duration, response_headers
from pipeserve.settings import RateLimitRule
from tests.conftest import free_port

REDIS = "redis://127.0.0.1:6379/0"
MODEL, OTHER = "model-a", "model-b"
MODEL_IDS = {MODEL: MODEL, "alias-a": MODEL, OTHER: OTHER}


def params(max_tokens: int | None = 1, text: str = "Hi", n: int = 1) -> ChatParams:
    return ChatParams(model=MODEL, messages=(ChatMessage("user", text),), max_tokens=max_tokens, n=n)


def completion(total_tokens: int) -> wire.ChatCompletion:
    usage = wire.Usage(
        prompt_tokens=total_tokens - 1,
        completion_tokens=1,
        total_tokens=total_tokens,
        prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=0),
        completion_tokens_details=wire.CompletionTokensDetails(reasoning_tokens=0, text_tokens=1),
        prompt_cache_hit_tokens=0,
        prompt_cache_miss_tokens=total_tokens - 1,
    )
    return wire.ChatCompletion(id="chatcmpl-1", created=0, model=MODEL, choices=[], usage=usage)


async def _drop(prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Backend]]:
    """Makes backends that share one store: the same memory, or one Redis prefix (as replicas would)."""
    if request.param == "memory":
        memory = MemoryBackend()
        yield lambda: memory
        return
    prefix = f"pipeserve-test-{uuid.uuid4().hex[:10]}:"
    made: list[RedisBackend] = []

    def make() -> Backend:
        made.append(RedisBackend(REDIS, prefix=prefix, timeout=2))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()
    await _drop(prefix)


def limiter(backends: Callable[[], Backend], *rules: dict[str, Any], **kwargs: Any) -> RateLimiter:
    configured = [RateLimitRule.model_validate(rule) for rule in rules]
    shared = not isinstance(backends(), MemoryBackend)
    return RateLimiter(configured, backends(), model_ids=MODEL_IDS, shared=shared, **kwargs)


async def refused(
    limits: RateLimiter, key: str | None = "key_1", model: str = MODEL, **kw: Any
) -> RateLimitReachedError:
    with pytest.raises(RateLimitReachedError) as caught:
        await limits.admit(key, model, params(**kw))
    return caught.value


async def test_requests_per_minute_then_openais_429(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"key": "*", "model": "*", "requests_per_minute": 2})
    for remaining in (1, 0):
        with response_headers() as headers:
            await limits.admit("key_1", MODEL, params())
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == str(remaining)
    error = await refused(limits)
    assert isinstance(error, ModelRateLimitError)  # the table names models: a fallback model may have room
    body = error.body()["error"]
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded" and body["param"] is None
    assert re.fullmatch(
        r"Rate limit reached for model-a with key key_1 on requests per min \(RPM\): Limit 2, Used 2, "
        r"Requested 1\. Please try again in [0-9.]+s\.",
        body["message"],
    ), body["message"]
    assert error.status_code == 429
    retry_ms = int(error.headers["retry-after-ms"])
    assert 0 < retry_ms <= PERIOD_MS / 2  # one request frees every 30 s
    assert error.headers["Retry-After"] == str(-(-retry_ms // 1000))
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"1m0s|[0-9.]+s", error.headers["x-ratelimit-reset-requests"])  # until it is full again


async def test_each_key_and_each_model_are_counted_apart(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"key": "*", "model": "*", "requests_per_minute": 1})
    await limits.admit("key_1", MODEL, params())
    await limits.admit("key_2", MODEL, params())
    await limits.admit("key_1", OTHER, params())
    await limits.admit(None, MODEL, params())  # requests without a key count as one more
    await refused(limits, key=None)
    await refused(limits, key="key_2")


async def test_a_table_without_key_or_model_counts_everything_together(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"requests_per_minute": 2})
    await limits.admit("key_1", MODEL, params())
    await limits.admit("key_2", OTHER, params())
    error = await refused(limits, key="key_3")
    assert not isinstance(error, ModelRateLimitError)  # another model would not help
    assert "Rate limit reached for all models on requests per min (RPM)" in error.message


async def test_a_key_by_name_and_a_model_by_alias(backends: Callable[[], Backend]) -> None:
    names = {"key_1": "batch", "key_2": "batch", "key_3": "web"}
    limits = limiter(backends, {"key": "batch", "model": "alias-a", "requests_per_minute": 1}, key_name=names.get)
    await limits.admit("key_1", MODEL, params())
    await limits.admit("key_3", MODEL, params())  # another name: not limited
    await limits.admit("key_1", OTHER, params())  # another model: not limited
    error = await refused(limits, key="key_2")  # keys sharing a name share the limit
    assert "for model-a with key batch on requests per min" in error.message


async def test_tokens_are_admitted_on_an_estimate_and_settled_at_the_real_usage(
    backends: Callable[[], Backend],
) -> None:
    limits = limiter(backends, {"key": "*", "tokens_per_minute": 1000})
    estimate = estimate_tokens(params(max_tokens=10))
    with response_headers() as headers:
        ticket = await limits.admit("key_1", MODEL, params(max_tokens=10))
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)
    assert "x-ratelimit-limit-requests" not in headers  # no requests limit applies
    await ticket.completing(_done(completion(900)))
    error = await refused(limits, max_tokens=200)
    assert error.body()["error"]["type"] == "tokens"
    # Settled at 900, not at the estimate (the bucket may have refilled a token while the test ran).
    used = int(re.search(r"Used (\d+)", error.message).group(1))  # type: ignore[union-attr]
    assert used in (899, 900), error.message
    assert f"Requested {estimate_tokens(params(max_tokens=200))}." in error.message
    assert "tokens per min (TPM): Limit 1000" in error.message
    await limits.admit("key_1", MODEL, params(max_tokens=10))  # a small one still fits


async def test_a_stream_settles_at_its_end_and_holds_its_slot_until_closed(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"tokens_per_minute": 1000, "concurrent_requests": 1})
    ticket = await limits.admit("key_1", MODEL, params(max_tokens=10))
    ended: list[wire.ChatCompletion | None] = []

    async def on_end(done: wire.ChatCompletion | None, error: Any) -> None:
        ended.append(done)

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b"data: [DONE]\n\n"

    async def start() -> EventStream:
        return EventStream(chunks())

    stream = await ticket.streaming(start())
    assert [chunk async for chunk in stream] == [b"data: [DONE]\n\n"]
    await ticket.settling(on_end)(completion(900), None)
    assert len(ended) == 1
    await refused(limits)  # the slot is held until the stream is closed
    await stream.aclose()
    error = await refused(limits, max_tokens=200)  # the slot is free; the tokens were settled at 900
    assert "tokens per min (TPM)" in error.message


async def test_a_request_refused_before_generating_gives_its_tokens_back(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"tokens_per_minute": 100})
    ticket = await limits.admit("key_1", MODEL, params(max_tokens=90))
    with pytest.raises(InvalidRequestError):
        await ticket.completing(_failing(InvalidRequestError("context too long")))
    await limits.admit("key_1", MODEL, params(max_tokens=90))


async def test_a_request_beyond_the_tokens_limit_is_too_large(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"model": "*", "tokens_per_minute": 100})
    error = await refused(limits, max_tokens=None)  # unset max_tokens counts 256
    assert error.message.startswith("Request too large for model-a on tokens per min (TPM): Limit 100, Requested ")
    assert error.body()["error"]["type"] == "tokens"
    await limits.admit("key_1", MODEL, params(max_tokens=50))  # nothing was charged


async def test_concurrent_requests_hold_a_slot_until_released(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"key": "*", "concurrent_requests": 1})
    first = await limits.admit("key_1", MODEL, params())
    error = await refused(limits)
    assert error.message == (
        "Rate limit reached for all models with key key_1 on concurrent requests: Limit 1, Used 1, Requested 1. "
        "Please try again when one of them has finished."
    )
    assert error.body()["error"]["type"] == "requests" and error.headers["Retry-After"] == "1"
    await limits.admit("key_2", MODEL, params())  # per key
    await first.completing(_done(completion(5)))
    second = await limits.admit("key_1", MODEL, params())
    await second.release()


async def test_a_refusal_charges_no_other_bucket(backends: Callable[[], Backend]) -> None:
    limits = limiter(
        backends,
        {"key": "key_1", "requests_per_minute": 1},
        {"model": "*", "requests_per_minute": 10, "concurrent_requests": 5},
    )
    await limits.admit("key_1", MODEL, params())
    for _ in range(5):
        await refused(limits)  # refused by the key's table: the model's table counts none of them
    with response_headers() as headers:
        await limits.admit("key_2", MODEL, params())
    assert headers["x-ratelimit-remaining-requests"] == "8"  # of the model's 10: key_1's first and this one


async def test_replicas_on_one_store_share_the_limits(backends: Callable[[], Backend]) -> None:
    rule = {"key": "*", "model": "*", "requests_per_minute": 3, "concurrent_requests": 1}
    one, two = limiter(backends, rule), limiter(backends, rule)
    held = await one.admit("key_1", MODEL, params())
    await refused(two)  # the other replica's request holds the one slot
    await held.release()
    await (await two.admit("key_1", MODEL, params())).release()  # released at once
    await (await one.admit("key_1", MODEL, params())).release()
    error = await refused(two)
    assert "Used 3" in error.message


async def test_a_lease_of_a_replica_that_died_expires(
    backends: Callable[[], Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limit_backends, "LEASE_MS", 200)
    limits = limiter(backends, {"concurrent_requests": 1})
    await limits.admit("key_1", MODEL, params())  # never released, and no replica refreshes it
    await refused(limits)
    await _eventually(lambda: limits.admit("key_1", MODEL, params()))


async def test_a_refreshed_lease_outlives_its_first_expiry(
    backends: Callable[[], Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limit_backends, "LEASE_MS", 1000)
    limits = limiter(backends, {"concurrent_requests": 1})
    held = await limits.admit("key_1", MODEL, params())
    monkeypatch.setattr(rate_limit_backends, "LEASE_MS", 60_000)
    await limits._backend.refresh([(key, held.lease) for key in held.leases])  # what the replica's task does
    await asyncio.sleep(1.5)
    await refused(limits)  # still held, past the first expiry
    await held.release()
    await (await limits.admit("key_1", MODEL, params())).release()


async def test_a_refused_request_fits_once_its_retry_time_has_passed(backends: Callable[[], Backend]) -> None:
    limits = limiter(backends, {"tokens_per_minute": 6000})  # 10 ms per token
    await limits.admit("key_1", MODEL, params(max_tokens=6000 - estimate_tokens(params(max_tokens=0))))
    error = await refused(limits, max_tokens=20)
    retry_ms = int(error.headers["retry-after-ms"])
    assert 0 < retry_ms <= estimate_tokens(params(max_tokens=20)) * 10 + 1
    await asyncio.sleep(retry_ms / 1000)
    await _eventually(lambda: limits.admit("key_1", MODEL, params(max_tokens=20)))


async def test_memory_refills_continuously() -> None:
    now = [0.0]
    limits = RateLimiter(
        [RateLimitRule(requests_per_minute=2)], MemoryBackend(clock=lambda: now[0]), model_ids=MODEL_IDS
    )
    await limits.admit(None, MODEL, params())
    await limits.admit(None, MODEL, params())
    error = await refused(limits, key=None)
    assert error.headers["retry-after-ms"] == "30000" and "Please try again in 30s." in error.message
    now[0] = 29_999.0
    await refused(limits, key=None)
    now[0] = 30_000.0
    with response_headers() as headers:
        await limits.admit(None, MODEL, params())
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"] == "1m0s"


async def test_memory_leases_are_refreshed_while_held() -> None:
    now = [0.0]
    limits = RateLimiter([RateLimitRule(concurrent_requests=1)], MemoryBackend(clock=lambda: now[0]))
    held = await limits.admit(None, MODEL, params())
    now[0] = rate_limit_backends.LEASE_MS - 1
    await limits._backend.refresh([(key, held.lease) for key in held.leases])
    now[0] = rate_limit_backends.LEASE_MS + 1
    await refused(limits, key=None)  # refreshed: still held
    now[0] = 2 * rate_limit_backends.LEASE_MS
    await limits.admit(None, MODEL, params())  # not refreshed again: expired


async def test_unreachable_redis_admits_unchecked() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", prefix="pipeserve-test:", timeout=0.5)
    limits = RateLimiter([RateLimitRule(requests_per_minute=1, concurrent_requests=1)], backend, shared=True)
    try:
        for _ in range(3):
            with response_headers() as headers:
                ticket = await limits.admit("key_1", MODEL, params())
            assert headers == {}
            await ticket.completing(_done(completion(5)))
        assert not limits.up and limits.unchecked == 3
    finally:
        await limits.close()


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [go_duration(ms) for ms in (0, 17, 999, 1000, 9816, 20_000, 60_000, 360_000, 3_723_500)] == [
        "0s",
        "17ms",
        "999ms",
        "1s",
        "9.816s",
        "20s",
        "1m0s",
        "6m0s",
        "1h2m3.5s",
    ]


def test_the_estimate_counts_the_prompt_and_the_completion_budget() -> None:
    assert estimate_tokens(params(max_tokens=10, text="x" * 40)) == 10 + 4 + 10
    assert estimate_tokens(params(max_tokens=None, n=2)) == 1 + 4 + 2 * 256


async def _done(value: wire.ChatCompletion) -> wire.ChatCompletion:
    return value


async def _failing(error: Exception) -> wire.ChatCompletion:
    raise error


async def _eventually(admit: Callable[[], Any], timeout: float = 10.0) -> Ticket:
    """Retry an admission that must succeed once time has passed (no timing is asserted, only the outcome)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ticket: Ticket = await admit()
            return ticket
        except RateLimitReachedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
