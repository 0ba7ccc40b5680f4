"""Start-up (context window), admission (max_concurrent, 429), cancel and stop closing the upstream stream."""

from __future__ import annotations

import asyncio

import pytest

from pipeserve.errors import EngineUnavailableError, RateLimitError
from tests.engines.openai.conftest import MODEL, collect, engine_for, generate, params, wait_until
from tests.fake_openai import FakeUpstream, Reply


async def test_the_context_window_comes_from_get_models(fake: FakeUpstream) -> None:
    fake.models_body = {"data": [{"id": "other", "max_model_len": 1}, {"id": MODEL, "max_model_len": 4096}]}
    async with engine_for(fake.url) as engine:
        assert engine.context_window == 4096


async def test_an_unknown_context_window_is_none_unless_configured(fake: FakeUpstream) -> None:
    async with engine_for(fake.url) as engine:
        assert engine.context_window is None
    async with engine_for(fake.url, max_model_len=8192) as engine:
        assert engine.context_window == 8192


async def test_an_answer_read_at_once_reaches_the_pipeline_as_one_step(fake: FakeUpstream) -> None:
    """What opening the stream read (the first content) and what came with it go to the pipeline together,
    finish included: a stream then writes them to its client at once."""
    fake.script(Reply(pieces=["Hel", "lo", " the", "re"], together=True), Reply(pieces=["a", "b"], delay_chunks=0.2))
    async with engine_for(fake.url) as engine:
        steps = [step async for step in await engine.generate(params())]
        assert len(steps) == 1
        assert "".join(d.content for d in steps[0]) == "Hello there" and steps[0][-1].finish_reason == "stop"
        # Events that come apart in time still go as they come: no step waits for the next.
        paced = [step async for step in await engine.generate(params())]
        assert ["".join(d.content for d in step) for step in paced if any(d.content for d in step)] == ["a", "b"]


async def test_cancel_closes_the_upstream_stream(fake: FakeUpstream) -> None:
    fake.script(Reply(pieces=["tok"] * 200, delay_chunks=0.05))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        async for _ in generation:
            break
        generation.cancel()
        await wait_until(lambda: fake.received[0].completed is not None)
    assert fake.received[0].completed is False  # the upstream saw the client go


async def test_cancel_while_waiting_for_the_first_byte_closes_it(fake: FakeUpstream) -> None:
    fake.script(Reply(delay_headers=3.0, pieces=["tok"] * 200, delay_chunks=0.05))
    async with engine_for(fake.url) as engine:
        task = asyncio.create_task(engine.generate(params()))
        await wait_until(lambda: len(fake.received) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: fake.received[0].completed is not None)
        assert fake.received[0].completed is False
        assert engine.stats().running_sequences == 0


async def test_stopping_every_choice_of_a_fan_out_closes_each_stream(fake: FakeUpstream) -> None:
    fake.default = Reply(pieces=["tok"] * 200, delay_chunks=0.05)
    async with engine_for(fake.url, supports_n=False) as engine:
        generation = await engine.generate(params(n=2))
        generation.stop(0, keep_cache=True)
        await wait_until(lambda: sum(r.completed is False for r in fake.received) == 1)
        seen = set()
        async for step in generation:
            seen |= {d.index for d in step}
            if 1 in seen:
                break
        generation.stop(1, keep_cache=True)
        await wait_until(lambda: all(r.completed is False for r in fake.received))


async def test_stopping_every_choice_of_one_stream_closes_it(fake: FakeUpstream) -> None:
    fake.default = Reply(pieces=["tok"] * 200, delay_chunks=0.05)
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params(n=2))
        generation.stop(1, keep_cache=True)
        async for step in generation:  # choice 1 is stopped: only choice 0 comes (after what was queued)
            if all(d.index == 0 for d in step):
                break
        assert fake.received[0].completed is None  # one choice still wanted: the stream goes on
        generation.stop(0, keep_cache=True)
        await wait_until(lambda: fake.received[0].completed is not None)
    assert fake.received[0].completed is False


async def test_max_concurrent_queues_then_refuses(fake: FakeUpstream) -> None:
    fake.default = Reply(pieces=["tok"] * 100, delay_chunks=0.05)
    async with engine_for(fake.url, max_concurrent=1, max_waiting=1) as engine:
        first = await engine.generate(params())
        waiting = asyncio.create_task(engine.generate(params()))
        await wait_until(lambda: engine.stats().waiting_requests == 1)
        with pytest.raises(RateLimitError) as caught:
            await engine.generate(params())
        assert caught.value.headers["Retry-After"] == "1" and "max_concurrent" in caught.value.message
        assert len(fake.received) == 1  # the waiting one has not been sent
        first.cancel()
        second = await waiting
        assert len(fake.received) == 2
        second.cancel()


async def test_a_finished_request_frees_its_slot(fake: FakeUpstream) -> None:
    async with engine_for(fake.url, max_concurrent=1, max_waiting=0) as engine:
        for _ in range(3):
            assert (await generate(engine)).content() == "Hello world"


async def test_close_fails_running_generations_and_closes_their_streams(fake: FakeUpstream) -> None:
    fake.default = Reply(pieces=["tok"] * 200, delay_chunks=0.05)
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        await collect(generation)
    await wait_until(lambda: fake.received[0].completed is not None)
    assert fake.received[0].completed is False
