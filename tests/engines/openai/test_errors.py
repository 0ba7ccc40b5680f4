"""Upstream failures to pipeserve's errors: the client's 4xx kept, pipeserve's credentials a 502, the rest
502 or 504, never a 500; failures inside a 200 stream before and after the first content."""

from __future__ import annotations

import json

import pytest

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
from tests.engines.openai.conftest import collect, engine_for, generate, params
from tests.fake_openai import FakeUpstream, Reply, dead_url


def error_body(message: str, param: str | None = None, code: str | None = None) -> dict:  # type: ignore[type-arg]
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequestError),
        (422, InvalidRequestError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, RequestTooLargeError),
    ],
)
async def test_client_errors_keep_the_upstreams_message(fake: FakeUpstream, status: int, kind: type) -> None:  # type: ignore[type-arg]
    fake.script(Reply(status=status, error=error_body("temperature is too hot", "temperature", "bad_temp")))
    async with engine_for(fake.url) as engine:
        with pytest.raises(kind) as caught:
            await engine.generate(params())
    error = caught.value
    assert (error.message, error.param, error.code) == ("temperature is too hot", "temperature", "bad_temp")
    assert type(error) is kind and len(fake.received) == 1  # not retried


async def test_vllm_context_length_error(fake: FakeUpstream) -> None:
    message = "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens."
    fake.script(
        Reply(status=400, error={"object": "error", "message": message, "type": "BadRequestError", "code": 400})
    )
    async with engine_for(fake.url) as engine:
        with pytest.raises(ContextLengthExceededError) as caught:
            await engine.generate(params())
    assert caught.value.message == message and caught.value.param == "messages"
    assert caught.value.status_code == 400


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_pipeserves_problem(fake: FakeUpstream, status: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FAKE_KEY", "sk-wrong-secret")
    fake.script(Reply(status=status, error=error_body("Incorrect API key provided: sk-wrong-secret")))
    async with engine_for(fake.url, api_key_env="FAKE_KEY") as engine:
        with pytest.raises(UpstreamAuthenticationError) as caught:
            await engine.generate(params())
    error = caught.value
    assert error.status_code == 502 and "FAKE_KEY" in error.message and "remote" in error.message
    assert str(fake.port) in error.message
    assert "sk-wrong-secret" not in error.message and "Incorrect API key provided: [redacted]" in error.message


async def test_a_missing_key_variable_stops_start_up(fake: FakeUpstream, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pipeserve.errors import StartupError

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(StartupError, match="NO_SUCH_KEY"):
        async with engine_for(fake.url, api_key_env="NO_SUCH_KEY"):
            pass


async def test_5xx_is_a_502_after_the_attempts(fake: FakeUpstream) -> None:
    fake.default = Reply(status=500, error=error_body("CUDA out of memory"))
    async with engine_for(fake.url, max_attempts=3) as engine:
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(params())
    assert caught.value.status_code == 502 and "CUDA out of memory" in caught.value.message
    assert "remote" in caught.value.message
    assert len(fake.received) == 3


async def test_refused_connections_are_502() -> None:
    async with engine_for(dead_url(), max_attempts=2) as engine:
        with pytest.raises(UpstreamError, match="Could not connect"):
            await engine.generate(params())


async def test_a_slow_first_byte_of_a_stream_is_a_504(fake: FakeUpstream) -> None:
    fake.script(Reply(delay_headers=3))
    async with engine_for(fake.url, read_timeout=0.3) as engine:
        with pytest.raises(UpstreamTimeoutError) as caught:
            await engine.generate(params(stream=True))
    assert caught.value.status_code == 504 and "read_timeout" in caught.value.message


async def test_a_plain_answer_may_take_longer_than_the_read_timeout(fake: FakeUpstream) -> None:
    # A plain answer arrives whole when the generation ends: only the total timeout bounds the wait.
    fake.script(Reply(delay_headers=0.8, whole=True))
    async with engine_for(fake.url, read_timeout=0.3, total_timeout=5.0) as engine:
        answer = await collect(await engine.generate(params()))
    assert answer.content() == "Hello world"


async def test_the_total_timeout_ends_a_long_stream_with_504(fake: FakeUpstream) -> None:
    fake.script(Reply(pieces=["x"] * 50, delay_chunks=0.2))
    async with engine_for(fake.url, total_timeout=1.0) as engine:
        with pytest.raises(UpstreamTimeoutError, match="total_timeout"):
            await collect(await engine.generate(params()))


async def test_malformed_json_before_content_is_a_502_not_retried(fake: FakeUpstream) -> None:
    fake.script(Reply(events=["{not json"]))
    async with engine_for(fake.url) as engine:
        with pytest.raises(UpstreamError, match="malformed JSON"):
            await engine.generate(params())
    assert len(fake.received) == 1


async def test_malformed_json_after_content_fails_the_generation(fake: FakeUpstream) -> None:
    good = Reply().scripted(1)
    fake.script(Reply(events=[*good[:2], "{oops"]))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        with pytest.raises(UpstreamError, match="malformed JSON"):
            await collect(generation)


@pytest.mark.parametrize(
    "event",
    [
        {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}},
        {"object": "error", "message": "engine died", "type": "InternalServerError", "code": 500},
    ],
)
async def test_an_error_event_before_content_is_retried(fake: FakeUpstream, event: dict) -> None:  # type: ignore[type-arg]
    fake.script(Reply(events=[json.dumps(event)]), Reply(pieces=["fine"]))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    assert answer.content() == "fine" and len(fake.received) == 2


async def test_a_4xx_error_event_before_content_is_the_clients_error(fake: FakeUpstream) -> None:
    event = {
        "object": "error",
        "message": "max_tokens is too large",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
    fake.script(Reply(events=[json.dumps(event)]))
    async with engine_for(fake.url) as engine:
        with pytest.raises(InvalidRequestError) as caught:
            await engine.generate(params())
    assert (caught.value.message, caught.value.param) == ("max_tokens is too large", "max_tokens")


async def test_an_error_event_after_content_fails_with_502(fake: FakeUpstream) -> None:
    good = Reply(pieces=["partial"]).scripted(1)
    fake.script(Reply(events=[*good[:2], json.dumps({"error": {"message": "engine died", "code": 400}})]))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        with pytest.raises(UpstreamError, match="engine died") as caught:
            await collect(generation)
    assert caught.value.status_code == 502 and len(fake.received) == 1


async def test_a_connection_dropped_mid_stream_fails_with_502(fake: FakeUpstream) -> None:
    fake.script(Reply(pieces=["a", "b", "c", "d"], drop_after=3))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        with pytest.raises(UpstreamError, match=r"dropped|closed"):
            await collect(generation)


async def test_a_stream_cut_before_done_and_finish_is_a_502(fake: FakeUpstream) -> None:
    events = Reply(pieces=["a", "b"]).scripted(1)[:3]  # role, "a", "b": no finish, no [DONE]
    fake.script(Reply(events=events, done=False))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        with pytest.raises(UpstreamError, match="closed the stream"):
            await collect(generation)


async def test_a_429_beyond_the_deadline_is_passed_on_with_retry_after(fake: FakeUpstream) -> None:
    fake.script(Reply(status=429, headers={"Retry-After": "120"}, error=error_body("slow down")))
    async with engine_for(fake.url, total_timeout=5) as engine:
        with pytest.raises(RateLimitError) as caught:
            await engine.generate(params())
    assert caught.value.headers["Retry-After"] == "120" and caught.value.message == "slow down"
    assert len(fake.received) == 1


def test_no_error_is_a_500() -> None:
    """Every class an upstream failure maps to answers 4xx, 502, 503 or 504."""
    from pipeserve.upstream import UpstreamContext, failure_from_status

    context = UpstreamContext("m", "http://u")
    for status in range(400, 600):
        error: PipeserveError = failure_from_status(status, b"{}", {}, context).error
        assert error.status_code != 500, status


async def test_an_aborted_choice_fails_the_generation(fake: FakeUpstream) -> None:
    fake.script(Reply(finish="abort"))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        with pytest.raises(UpstreamError, match="abort"):
            await collect(generation)
