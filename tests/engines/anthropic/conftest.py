"""The fake Anthropic server, and engines pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeserve.engines import create_engine
from pipeserve.engines.base import Delta, Engine, Generation
from pipeserve.params import ChatMessage, ChatParams
from pipeserve.settings import ModelConfig
from tests.fake_anthropic import FakeAnthropic

MODEL = "claude-test"
KEY_ENV = "PIPESERVE_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-test-0123456789-secret"

MakeEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
async def make_engine(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeEngine]:
    """Started engines on the fake server (options as keyword arguments), closed after the test."""
    monkeypatch.setenv(KEY_ENV, KEY)
    engines: list[Engine] = []

    async def make(max_waiting: int = 8, **options: Any) -> Engine:
        options = {"base_url": fake.url, "api_key_env": KEY_ENV, "max_attempts": 1, **options}
        engine = create_engine(ModelConfig(id=MODEL, engine="anthropic", **options), max_waiting=max_waiting)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> Engine:
    return await make_engine()


def params(*messages: ChatMessage | tuple[str, str], **fields: Any) -> ChatParams:
    chat = tuple(m if isinstance(m, ChatMessage) else ChatMessage(*m) for m in messages)
    return ChatParams(model=MODEL, messages=chat or (ChatMessage("user", "Hi"),), **fields)


@dataclass
class Call:
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Choice:
    content: str = ""
    reasoning: str = ""
    calls: dict[int, Call] = field(default_factory=dict)
    finish_reason: str | None = None
    deltas: list[Delta] = field(default_factory=list)


async def collect(generation: Generation) -> dict[int, Choice]:
    """Every delta of a generation, gathered per choice."""
    choices: dict[int, Choice] = {}
    async for step in generation:
        for delta in step:
            choice = choices.setdefault(delta.index, Choice())
            assert choice.finish_reason is None, f"choice {delta.index} got a delta after its finish: {delta}"
            choice.deltas.append(delta)
            choice.content += delta.content
            choice.reasoning += delta.reasoning
            for fragment in delta.tool_calls:
                call = choice.calls.setdefault(fragment.index, Call())
                if fragment.id is not None:
                    assert call.id is None, "a call is named once, by its first fragment"
                    call.id, call.name = fragment.id, fragment.name
                call.arguments += fragment.arguments
            choice.finish_reason = delta.finish_reason
    return choices
