"""Anthropic's event stream read back as typed deltas: text, thinking, tool calls, usage, finish reasons, n."""

from __future__ import annotations

import json

import pytest

from pipeserve.engines.base import Engine
from pipeserve.params import ToolSpec
from tests.engines.anthropic.conftest import MakeEngine, collect, params
from tests.engines.anthropic.shapes import check_request
from tests.fake_anthropic import Exchange, FakeAnthropic, reply, text, thinking, tool_use

WEATHER = ToolSpec("get_weather", "Weather of a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = ToolSpec("get_time", None, {"type": "object", "properties": {}})


async def test_text_arrives_piece_by_piece(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(Exchange(events=reply(text("Hel", "lo", " there"), input_tokens=21, output_tokens=4)))
    generation = await engine.generate(params(("user", "Hi")))
    assert generation.usage.prompt_tokens == 21  # known once generate returns
    choices = await collect(generation)
    assert [d.content for d in choices[0].deltas] == ["Hel", "lo", " there", ""]
    assert choices[0].content == "Hello there"
    assert choices[0].finish_reason == "stop"
    assert generation.usage.completion_tokens == 4
    check_request(fake.last)
    assert fake.last["stream"] is True


async def test_thinking_is_reasoning(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(thinking_budget=2048, default_max_tokens=4096)
    assert engine.capabilities.reasoning
    fake.answer(Exchange(events=reply(thinking("Let me ", "think."), text("42"), output_tokens=30, thinking_tokens=20)))
    generation = await engine.generate(params(("user", "6 * 7?")))
    choices = await collect(generation)
    assert choices[0].reasoning == "Let me think."  # the signature is not passed on
    assert choices[0].content == "42"
    assert generation.usage.completion_tokens == 30
    assert generation.usage.reasoning_tokens == 20
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert fake.last["max_tokens"] == 4096
    check_request(fake.last)


async def test_tool_calls_stream_as_fragments(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(
        Exchange(
            events=reply(
                text("Checking."),
                tool_use("toolu_01A", "get_weather", '{"city": ', '"Paris"}'),
                tool_use("toolu_01B", "get_time"),
                stop_reason="tool_use",
            )
        )
    )
    choices = await collect(await engine.generate(params(("user", "Weather?"), tools=(WEATHER, TIME))))
    choice = choices[0]
    assert choice.content == "Checking."
    assert choice.calls[0].id == "toolu_01A" and choice.calls[0].name == "get_weather"
    assert json.loads(choice.calls[0].arguments) == {"city": "Paris"}
    # The first fragment names the call; the arguments follow in the pieces Anthropic sent.
    pieces = [f.arguments for d in choice.deltas for f in d.tool_calls if f.index == 0]
    assert pieces == ["", '{"city": ', '"Paris"}']
    assert choice.calls[1].name == "get_time" and choice.calls[1].arguments == "{}"  # no input: an empty object
    assert choice.finish_reason == "tool_calls"


async def test_usage_counts_cache_reads_and_writes_as_prompt(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(Exchange(events=reply(text("ok"), input_tokens=5, cache_read=100, cache_creation=20, output_tokens=2)))
    generation = await engine.generate(params())
    await collect(generation)
    usage = generation.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (125, 100, 2)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reasons(engine: Engine, fake: FakeAnthropic, stop_reason: str, finish_reason: str) -> None:
    fake.answer(Exchange(events=reply(text("Some text"), stop_reason=stop_reason)))
    choices = await collect(await engine.generate(params()))
    assert choices[0].finish_reason == finish_reason


async def test_n_fans_out_to_concurrent_requests(engine: Engine, fake: FakeAnthropic) -> None:
    answers = iter(["first", "second"])
    fake.responder = lambda body: Exchange(
        events=reply(text(next(answers)), input_tokens=10, cache_read=4, output_tokens=3)
    )
    generation = await engine.generate(params(("user", "Say something"), n=2))
    choices = await collect(generation)
    assert sorted(choices) == [0, 1]
    assert {choices[0].content, choices[1].content} == {"first", "second"}
    assert all(c.finish_reason == "stop" for c in choices.values())
    assert len(fake.received) == 2
    assert fake.received[0].body == fake.received[1].body
    # The prompt is one prompt, however many choices: counted once; the completions add up.
    usage = generation.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (14, 4, 6)


async def test_unknown_events_and_blocks_are_skipped(engine: Engine, fake: FakeAnthropic) -> None:
    events = reply(text("visible"))
    # A block type this engine does not know (a server tool's result) and an event type newer than it.
    events[2:2] = [
        {"type": "content_block_start", "index": 5, "content_block": {"type": "future_block", "data": 1}},
        {"type": "content_block_delta", "index": 5, "delta": {"type": "future_delta", "x": 1}},
        {"type": "content_block_stop", "index": 5},
        {"type": "something_new"},
    ]
    fake.answer(Exchange(events=events))
    choices = await collect(await engine.generate(params()))
    assert choices[0].content == "visible"
