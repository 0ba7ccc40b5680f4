"""Fixtures: fake upstreams on loopback (module-scoped, reset per test) and engines started against them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeserve.engines import create_engine
from pipeserve.engines.base import Delta, Engine, Generation, Usage
from pipeserve.params import ChatMessage, ChatParams
from pipeserve.settings import ModelConfig
from tests.fake_openai import FakeUpstream, serving

MODEL = "remote"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[list[FakeUpstream]]:
    yield from serving(3)


@pytest.fixture
def fakes(upstreams: list[FakeUpstream]) -> list[FakeUpstream]:
    for upstream in upstreams:
        upstream.reset()
    return upstreams


@pytest.fixture
def fake(fakes: list[FakeUpstream]) -> FakeUpstream:
    return fakes[0]


@asynccontextmanager
async def engine_for(*urls: str, max_waiting: int = 8, **options: Any) -> AsyncIterator[Engine]:
    """An `openai` engine on `urls`, started, closed on exit. Retries are quick unless the test says."""
    defaults: dict[str, Any] = {"health_interval": 0, "retry_base_delay": 0.01, "retry_max_delay": 0.05}
    where: dict[str, Any] = {"base_url": urls[0]} if len(urls) == 1 else {"base_urls": list(urls)}
    config = ModelConfig(id=MODEL, engine="openai", **where, **{**defaults, **options})
    engine = create_engine(config, max_waiting=max_waiting)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def params(*messages: str | ChatMessage, **fields: Any) -> ChatParams:
    chat = tuple(m if isinstance(m, ChatMessage) else ChatMessage("user", m) for m in messages or ("Hi",))
    return ChatParams(model=MODEL, messages=chat, **fields)


@dataclass
class Answer:
    """What a generation yielded, per choice."""

    deltas: list[Delta] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def content(self, index: int = 0) -> str:
        return "".join(d.content for d in self.deltas if d.index == index)

    def reasoning(self, index: int = 0) -> str:
        return "".join(d.reasoning for d in self.deltas if d.index == index)

    def finish(self, index: int = 0) -> str | None:
        return next((d.finish_reason for d in self.deltas if d.index == index and d.finish_reason), None)

    def indices(self) -> set[int]:
        return {d.index for d in self.deltas}


async def collect(generation: Generation) -> Answer:
    answer = Answer()
    async for step in generation:
        answer.deltas += step
    answer.usage = generation.usage
    return answer


async def generate(engine: Engine, request: ChatParams | None = None) -> Answer:
    return await collect(await engine.generate(request or params()))


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until `condition()` holds; fails (not a timing assertion: the timeout is generous) if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)
