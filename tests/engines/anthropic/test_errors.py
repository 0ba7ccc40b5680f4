"""Anthropic's errors, before its stream and inside it, as pipeserve's; retries before the first event."""

from __future__ import annotations

import pytest

from pipeserve.engines.base import Engine
from pipeserve.errors import (
    ContextLengthExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    NotFoundError,
    PipeserveError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tests.conftest import free_port
from tests.engines.anthropic.conftest import KEY, KEY_ENV, MakeEngine, collect, params
from tests.fake_anthropic import Exchange, FakeAnthropic, error_body, failure, reply, text


@pytest.mark.parametrize(
    ("status", "kind", "expected", "client_status"),
    [
        (400, "invalid_request_error", InvalidRequestError, 400),
        (404, "not_found_error", NotFoundError, 404),
        (413, "request_too_large", RequestTooLargeError, 413),
        (429, "rate_limit_error", RateLimitError, 429),
        (500, "api_error", UpstreamError, 502),
        (529, "overloaded_error", UpstreamError, 502),
    ],
)
async def test_errors_by_status(
    engine: Engine,
    fake: FakeAnthropic,
    status: int,
    kind: str,
    expected: type[PipeserveError],
    client_status: int,
) -> None:
    fake.answer(failure(status, kind, f"the {kind} message"))
    with pytest.raises(expected) as caught:
        await engine.generate(params())
    error = caught.value
    assert error.status_code == client_status
    assert "the " + kind + " message" in error.message  # a 4xx keeps Anthropic's message; a 5xx quotes it
    if status < 500:
        assert error.message == f"the {kind} message"
    assert len(fake.received) == 1  # max_attempts 1


@pytest.mark.parametrize(("status", "kind"), [(401, "authentication_error"), (403, "permission_error")])
async def test_a_refused_key_is_a_502_naming_its_variable(
    engine: Engine, fake: FakeAnthropic, status: int, kind: str
) -> None:
    fake.answer(failure(status, kind, f"invalid x-api-key {KEY}"))  # a key echoed back is scrubbed
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(params())
    assert caught.value.status_code == 502
    assert KEY_ENV in caught.value.message
    assert KEY not in caught.value.message


async def test_a_prompt_too_long_is_context_length_exceeded(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(failure(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"))
    with pytest.raises(ContextLengthExceededError) as caught:
        await engine.generate(params())
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"


async def test_rate_limit_keeps_anthropics_retry_after(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(failure(429, "rate_limit_error", "slow down", {"retry-after": "17"}))
    with pytest.raises(RateLimitError) as caught:
        await engine.generate(params())
    assert caught.value.headers["Retry-After"] == "17"


@pytest.mark.parametrize(
    ("status", "kind", "headers"),
    [(529, "overloaded_error", {}), (429, "rate_limit_error", {"retry-after": "0"}), (500, "api_error", {})],
)
async def test_retries_before_the_first_event(
    make_engine: MakeEngine, fake: FakeAnthropic, status: int, kind: str, headers: dict[str, str]
) -> None:
    engine = await make_engine(max_attempts=3)
    fake.answer(failure(status, kind, "busy", headers), Exchange(events=reply(text("at last"))))
    choices = await collect(await engine.generate(params()))
    assert choices[0].content == "at last"
    assert len(fake.received) == 2
    assert fake.received[0].body == fake.received[1].body


async def test_retries_run_out(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(max_attempts=2)
    fake.answer(failure(529, "overloaded_error", "Overloaded"), failure(529, "overloaded_error", "Overloaded"))
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(params())
    assert caught.value.code == "upstream_error"
    assert "529" in caught.value.message and "Overloaded" in caught.value.message
    assert len(fake.received) == 2


async def test_a_client_error_is_not_retried(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(max_attempts=4)
    fake.answer(failure(400, "invalid_request_error", "bad"))
    with pytest.raises(InvalidRequestError):
        await engine.generate(params())
    assert len(fake.received) == 1


async def test_an_error_event_before_any_content_is_retried(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(max_attempts=2)
    fake.answer(
        Exchange(events=[error_body("overloaded_error", "Overloaded")]),
        Exchange(events=reply(text("fine"))),
    )
    choices = await collect(await engine.generate(params()))
    assert choices[0].content == "fine"
    assert len(fake.received) == 2


async def test_an_error_event_inside_the_stream_fails_the_generation(engine: Engine, fake: FakeAnthropic) -> None:
    events = reply(text("partial ", "answer"))[:-3]  # message_start, ping, block start, both deltas
    fake.answer(Exchange(events=[*events, error_body("overloaded_error", "Overloaded")]))
    generation = await engine.generate(params())
    content = ""
    with pytest.raises(UpstreamError) as caught:
        async for step in generation:
            content += "".join(d.content for d in step)
    assert content == "partial answer"  # what came before the error was passed on
    assert "Overloaded" in caught.value.message
    assert caught.value.status_code == 502


async def test_an_invalid_request_event_inside_the_stream_keeps_its_status(engine: Engine, fake: FakeAnthropic) -> None:
    events = reply(text("x"))[:1]
    fake.answer(Exchange(events=[*events, error_body("invalid_request_error", "bad thing")]))
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(params())  # before any content: raised by generate itself
    assert caught.value.message == "bad thing"


async def test_a_stream_cut_before_message_stop_is_a_502(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(Exchange(events=reply(text("cut"))[:-2]))
    generation = await engine.generate(params())
    with pytest.raises(UpstreamError) as caught:
        await collect(generation)
    assert "message_stop" in caught.value.message


async def test_unreadable_events_are_a_502(engine: Engine, fake: FakeAnthropic) -> None:
    start = reply(text("x"))[:1]
    fake.answer(Exchange(events=[*start, {"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta"}}]))
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(params())
    assert "never started" in caught.value.message


@pytest.mark.parametrize("before_content", [True, False])
async def test_a_silent_upstream_is_a_504(make_engine: MakeEngine, fake: FakeAnthropic, before_content: bool) -> None:
    engine = await make_engine(read_timeout=0.3)
    events = reply(text("x"))[: 1 if before_content else 4]
    fake.answer(Exchange(events=events, hold=True, hold_pings=False))
    with pytest.raises(UpstreamTimeoutError) as caught:
        await collect(await engine.generate(params()))
    assert caught.value.status_code == 504


@pytest.mark.parametrize("before_content", [True, False])
async def test_total_timeout_is_a_504(make_engine: MakeEngine, fake: FakeAnthropic, before_content: bool) -> None:
    engine = await make_engine(total_timeout=0.5)
    events = reply(text("x"))[: 1 if before_content else 4]
    fake.answer(Exchange(events=events, hold=True))  # pings keep the read timeout at bay
    with pytest.raises(UpstreamTimeoutError) as caught:
        await collect(await engine.generate(params()))
    assert "total_timeout" in caught.value.message


async def test_a_refused_connection_is_a_502(make_engine: MakeEngine) -> None:
    engine = await make_engine(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(params())
    assert caught.value.status_code == 502
    assert KEY not in caught.value.message


async def test_events_of_an_unexpected_shape_are_a_502(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(Exchange(events=[{"type": "message_start", "message": "not an object"}]))
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(params())
    assert "unexpected shape" in caught.value.message


async def test_failures_in_a_row_open_the_circuit(engine: Engine, fake: FakeAnthropic) -> None:
    fake.responder = lambda body: failure(529, "overloaded_error", "Overloaded")
    for _ in range(5):  # the breaker's threshold
        with pytest.raises(UpstreamError):
            await engine.generate(params())
    assert "circuit open" in (engine.problem() or "")
    with pytest.raises(EngineUnavailableError):  # 503 without asking Anthropic, until the cool-down ends
        await engine.generate(params())
    assert len(fake.received) == 5


async def test_a_key_echoed_in_a_client_error_is_scrubbed(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(failure(400, "invalid_request_error", f"header x-api-key={KEY} is odd"))
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(params())
    assert KEY not in caught.value.message
