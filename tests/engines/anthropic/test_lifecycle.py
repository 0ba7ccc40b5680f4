"""Start, stop, cancel and admission: a client that leaves closes Anthropic's stream."""

from __future__ import annotations

import asyncio

import pytest

from pipeserve.engines import create_engine
from pipeserve.engines.base import Engine
from pipeserve.errors import EngineUnavailableError, RateLimitError, StartupError
from pipeserve.settings import ModelConfig
from tests.engines.anthropic.conftest import KEY, KEY_ENV, MODEL, MakeEngine, collect, params
from tests.fake_anthropic import Exchange, FakeAnthropic, Received, reply, text


async def wait_for_disconnect(received: Received) -> None:
    # Generous: only a failure waits this long; the assertion is that it happens at all.
    assert await asyncio.to_thread(received.disconnected.wait, 30), "the upstream stream was never closed"


async def test_cancel_closes_the_upstream_stream(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(Exchange(events=reply(text("Once upon"))[:4], hold=True))
    generation = await engine.generate(params())
    first = await anext(aiter(generation))
    assert first[0].content == "Once upon"
    generation.cancel()
    await wait_for_disconnect(fake.received[-1])
    assert engine.stats().running_sequences == 0


async def test_stopping_one_choice_closes_its_stream_only(engine: Engine, fake: FakeAnthropic) -> None:
    answers = iter([Exchange(events=reply(text("a"))[:4], hold=True), Exchange(events=reply(text("b"))[:4], hold=True)])
    fake.responder = lambda body: next(answers)
    generation = await engine.generate(params(n=2))
    generation.stop(0, keep_cache=True)
    # The two requests are alike: one of them (choice 0's) closes, the other stays open.
    for _ in range(600):  # only a failure waits it out
        if any(r.disconnected.is_set() for r in fake.received):
            break
        await asyncio.sleep(0.05)
    assert sum(r.disconnected.is_set() for r in fake.received) == 1
    generation.stop(1, keep_cache=True)
    for r in fake.received:
        await wait_for_disconnect(r)
    # All choices stopped: the generation ends, with no finish of its own.
    choices = await collect(generation)
    assert all(c.finish_reason is None for c in choices.values())


async def test_a_client_gone_while_waiting_for_the_first_event_closes_the_stream(
    engine: Engine, fake: FakeAnthropic
) -> None:
    fake.answer(Exchange(events=reply(text("x"))[:1], hold=True))
    task = asyncio.create_task(engine.generate(params()))
    while not fake.received:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_disconnect(fake.received[-1])


async def test_beyond_max_concurrent_and_the_queue_is_a_429(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(max_concurrent=1, max_waiting=1)
    fake.responder = lambda body: Exchange(events=reply(text("busy"))[:4], hold=True)
    running = await engine.generate(params())
    waiting = asyncio.create_task(engine.generate(params()))
    while engine.stats().waiting_requests == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(RateLimitError) as caught:
        await engine.generate(params())
    assert caught.value.headers["Retry-After"] == "1"
    running.cancel()  # a slot frees: the waiting request runs
    second = await waiting
    second.cancel()
    assert len(fake.received) == 2


async def test_a_missing_key_stops_the_start(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    engine = create_engine(ModelConfig(id=MODEL, engine="anthropic", api_key_env=KEY_ENV), max_waiting=1)
    with pytest.raises(StartupError, match=KEY_ENV):
        await engine.start()


async def test_the_key_shows_nowhere(engine: Engine) -> None:
    assert KEY not in repr(vars(engine))
    assert KEY not in repr(getattr(engine, "options", None))
    assert engine.problem() is None


async def test_a_closed_engine_refuses_requests(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine()
    fake.answer(Exchange(events=reply(text("x"))[:4], hold=True))
    generation = await engine.generate(params())
    await engine.close()
    await wait_for_disconnect(fake.received[-1])
    assert engine.problem() is not None
    del generation


async def test_closing_while_a_request_starts_is_a_503(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine()
    fake.answer(Exchange(events=reply(text("x"))[:1], hold=True))
    task = asyncio.create_task(engine.generate(params()))
    while not fake.received:
        await asyncio.sleep(0.01)
    await engine.close()
    with pytest.raises(EngineUnavailableError):
        await task
    await wait_for_disconnect(fake.received[-1])
