"""Which replica a request goes to: least outstanding, prefix affinity, failover."""

from __future__ import annotations

import uuid

from tests.engines.openai.conftest import collect, engine_for, generate, params, wait_until
from tests.fake_openai import FakeUpstream, Reply, dead_url


def served_by(fakes: list[FakeUpstream]) -> list[int]:
    return [len(f.received) for f in fakes]


async def test_least_outstanding_without_affinity(fakes: list[FakeUpstream]) -> None:
    a, b, c = fakes
    for fake in fakes:
        fake.default = Reply(pieces=["x"] * 400, delay_chunks=0.1)
    async with engine_for(a.url, b.url, c.url, affinity_prefix_chars=0) as engine:
        running = [await engine.generate(params()) for _ in range(3)]
        assert served_by(fakes) == [1, 1, 1]  # each went to an idle replica
        assert [r["outstanding"] for r in engine.replicas()] == [1, 1, 1]  # type: ignore[attr-defined]
        for generation in running:
            generation.cancel()
        await wait_until(lambda: all(r["outstanding"] == 0 for r in engine.replicas()))  # type: ignore[attr-defined]


async def test_a_shared_prefix_sticks_to_one_replica(fakes: list[FakeUpstream]) -> None:
    system = "You are a catalogue assistant. " + " ".join(f"item-{i}" for i in range(400))
    async with engine_for(*(f.url for f in fakes), affinity_prefix_chars=1024) as engine:
        for question in range(6):
            await generate(engine, params(f"{system}\nQuestion {question}: what is item {question}?"))
    assert sorted(served_by(fakes)) == [0, 0, 6]


async def test_different_prefixes_spread(fakes: list[FakeUpstream]) -> None:
    async with engine_for(*(f.url for f in fakes), affinity_prefix_chars=1024) as engine:
        for _ in range(30):
            await generate(engine, params(f"{uuid.uuid4()} tell me a story"))
    assert sum(1 for n in served_by(fakes) if n) >= 2


async def test_a_busy_affine_replica_gives_way_to_the_least_busy(fakes: list[FakeUpstream]) -> None:
    a, b = fakes[0], fakes[1]
    for fake in (a, b):
        fake.default = Reply(pieces=["x"] * 400, delay_chunks=0.1)
    prompt = "shared prefix " * 100
    async with engine_for(a.url, b.url, affinity_prefix_chars=512, affinity_slack=1) as engine:
        running = [await engine.generate(params(prompt)) for _ in range(4)]
        # The affine replica takes requests until it is `affinity_slack` busier than the other.
        assert sorted(served_by([a, b])) == [1, 3]
        for generation in running:
            generation.cancel()


async def test_failover_when_a_replica_is_down(fakes: list[FakeUpstream]) -> None:
    alive = fakes[0]
    down = dead_url()
    # No affinity: between idle replicas the first listed goes first, so the first request meets the dead one.
    options = {"max_attempts": 2, "breaker_threshold": 1, "breaker_cooldown": 60, "affinity_prefix_chars": 0}
    async with engine_for(down, alive.url, **options) as engine:
        answers = [await generate(engine, params(f"question {i}")) for i in range(6)]
        assert all(a.content() == "Hello world" for a in answers)
        dead, live = engine.replicas()  # type: ignore[attr-defined]
    assert len(alive.received) == 6
    assert dead["breaker"] == "open" and dead["failures"] == 1 and "Could not connect" in dead["last_error"]
    assert live["breaker"] == "closed" and live["requests"] == 6


async def test_stats_count_requests_in_flight(fake: FakeUpstream) -> None:
    fake.default = Reply(pieces=["x"] * 400, delay_chunks=0.1)
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params())
        assert engine.stats().running_sequences == 1
        generation.cancel()
        await wait_until(lambda: engine.stats().running_sequences == 0)
        fake.default = Reply()
        await collect(await engine.generate(params()))
        assert engine.stats().running_sequences == 0
