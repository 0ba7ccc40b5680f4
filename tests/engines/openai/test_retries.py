"""Retries before the first content: 429 honouring Retry-After, 5xx, refused connections; the circuit
breaker opening and its half-open recovery; health checks."""

from __future__ import annotations

import pytest

from pipeserve.errors import EngineUnavailableError, InvalidRequestError, UpstreamError
from tests.engines.openai.conftest import engine_for, generate, params, wait_until
from tests.fake_openai import FakeUpstream, Reply, dead_url


async def test_a_429_is_retried_after_its_retry_after(fake: FakeUpstream) -> None:
    fake.script(Reply(status=429, headers={"Retry-After": "1"}), Reply(pieces=["ok"]))
    async with engine_for(fake.url, max_attempts=2) as engine:
        answer = await generate(engine)
    assert answer.content() == "ok"
    first, second = fake.received
    assert second.at - first.at >= 1.0  # the wait is at least what the upstream asked for


async def test_5xx_is_retried_then_answers(fake: FakeUpstream) -> None:
    fake.script(Reply(status=503), Reply(status=502), Reply(pieces=["third time"]))
    async with engine_for(fake.url, max_attempts=3) as engine:
        assert (await generate(engine)).content() == "third time"
    assert len(fake.received) == 3


async def test_an_error_after_the_first_content_is_not_retried(fake: FakeUpstream) -> None:
    fake.script(Reply(pieces=["a", "b", "c"], drop_after=2))
    async with engine_for(fake.url, max_attempts=3) as engine:
        generation = await engine.generate(params())
        with pytest.raises(UpstreamError):
            async for _ in generation:
                pass
    assert len(fake.received) == 1


async def test_a_retry_goes_to_another_replica(fakes: list[FakeUpstream]) -> None:
    a, b = fakes[0], fakes[1]
    a.default = b.default = Reply(status=500)
    async with engine_for(a.url, b.url, max_attempts=2, affinity_prefix_chars=0) as engine:
        with pytest.raises(UpstreamError):
            await engine.generate(params())
    assert (len(a.received), len(b.received)) == (1, 1)


async def test_the_breaker_opens_then_recovers_half_open(fake: FakeUpstream) -> None:
    fake.default = Reply(status=500)
    async with engine_for(fake.url, max_attempts=1, breaker_threshold=2, breaker_cooldown=2) as engine:
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await engine.generate(params())
        assert engine.problem() is not None and "circuit open" in engine.problem()  # type: ignore[operator]
        with pytest.raises(EngineUnavailableError):
            await engine.generate(params())
        assert len(fake.received) == 2  # the open circuit sent nothing
        replica = engine.replicas()[0]  # type: ignore[attr-defined]
        assert replica["breaker"] == "open" and replica["failures"] == 2

        await wait_until(lambda: engine.problem() is None)  # the cool-down passed: one trial may go
        with pytest.raises(UpstreamError):  # the trial fails: open again
            await engine.generate(params())
        assert engine.replicas()[0]["breaker"] == "open"  # type: ignore[attr-defined]

        fake.default = Reply(pieces=["back"])
        await wait_until(lambda: engine.problem() is None)
        assert (await generate(engine)).content() == "back"
        assert engine.replicas()[0]["breaker"] == "closed"  # type: ignore[attr-defined]


async def test_failing_health_checks_take_a_replica_out_and_back(fakes: list[FakeUpstream]) -> None:
    a, b = fakes[0], fakes[1]
    async with engine_for(a.url, b.url, health_interval=0.1, affinity_prefix_chars=0) as engine:
        a.models_status = 500
        await wait_until(lambda: not engine.replicas()[0]["healthy"])  # type: ignore[attr-defined]
        for _ in range(4):
            await generate(engine)
        assert (len(a.received), len(b.received)) == (0, 4)
        b.models_status = 503
        await wait_until(lambda: engine.problem() is not None)
        assert "health check" in engine.problem()  # type: ignore[operator]
        with pytest.raises(EngineUnavailableError):
            await engine.generate(params())
        a.models_status = b.models_status = 200
        await wait_until(lambda: engine.problem() is None)
        await generate(engine)


async def test_a_server_without_a_models_route_is_healthy(fake: FakeUpstream) -> None:
    fake.models_status = 404
    async with engine_for(fake.url, health_interval=0.1) as engine:
        await wait_until(lambda: fake.models_calls >= 2)
        assert engine.problem() is None


async def test_starting_with_every_replica_down_answers_503_until_one_is_up() -> None:
    async with engine_for(dead_url(), health_interval=30) as engine:
        assert "health check" in (engine.problem() or "")
        with pytest.raises(EngineUnavailableError):
            await engine.generate(params())


async def test_a_connection_dropped_before_content_is_retried(fake: FakeUpstream) -> None:
    fake.script(Reply(drop_after=1), Reply(pieces=["again"]))  # only the role chunk, then the drop
    async with engine_for(fake.url) as engine:
        assert (await generate(engine)).content() == "again"
    assert len(fake.received) == 2


async def test_client_errors_do_not_open_the_breaker(fake: FakeUpstream) -> None:
    fake.default = Reply(status=400)
    async with engine_for(fake.url, breaker_threshold=1) as engine:
        for _ in range(3):
            with pytest.raises(InvalidRequestError):
                await engine.generate(params())
        assert engine.problem() is None
        assert engine.replicas()[0]["failures"] == 0  # type: ignore[attr-defined]
