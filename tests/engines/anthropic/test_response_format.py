"""response_format through a forced tool whose input is the answer, and extended thinking beside it."""

from __future__ import annotations

import json

import pytest

from pipeserve.engines.base import Engine
from pipeserve.params import ResponseFormat, ToolSpec
from tests.engines.anthropic.conftest import MakeEngine, collect, params
from tests.engines.anthropic.shapes import check_request
from tests.fake_anthropic import Exchange, FakeAnthropic, reply, text, thinking, tool_use

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER = ToolSpec("get_weather", "Weather of a city", {"type": "object", "properties": {"city": {"type": "string"}}})


async def test_json_schema_is_a_forced_tool_read_back_as_content(engine: Engine, fake: FakeAnthropic) -> None:
    fmt = ResponseFormat("json_schema", PERSON, "person", "A person", strict=True)
    fake.answer(
        Exchange(events=reply(tool_use("toolu_01", "person", '{"name": "Ada",', ' "age": 36}'), stop_reason="tool_use"))
    )
    choices = await collect(await engine.generate(params(("user", "Who?"), response_format=fmt)))
    assert json.loads(choices[0].content) == {"name": "Ada", "age": 36}
    assert choices[0].calls == {}
    assert choices[0].finish_reason == "stop"  # the answer tool is no tool call for the client
    body = fake.last
    check_request(body)
    assert body["tools"] == [{"name": "person", "description": "A person", "input_schema": PERSON, "strict": True}]
    assert body["tool_choice"] == {"type": "tool", "name": "person", "disable_parallel_tool_use": True}


async def test_json_object_is_a_forced_tool_taking_any_object(engine: Engine, fake: FakeAnthropic) -> None:
    fake.answer(Exchange(events=reply(tool_use("toolu_01", "json_response", '{"ok": true}'), stop_reason="tool_use")))
    choices = await collect(
        await engine.generate(params(("user", "JSON please"), response_format=ResponseFormat("json_object")))
    )
    assert choices[0].content == '{"ok": true}'
    assert choices[0].finish_reason == "stop"
    tool = fake.last["tools"][0]
    assert (tool["name"], tool["input_schema"]) == ("json_response", {"type": "object"})
    assert fake.last["tool_choice"]["name"] == "json_response"


async def test_a_schema_whose_root_is_no_object_travels_wrapped(engine: Engine, fake: FakeAnthropic) -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    fake.answer(
        Exchange(events=reply(tool_use("toolu_01", "numbers", '{"value": ', "[1, 2, 3]}"), stop_reason="tool_use"))
    )
    fmt = ResponseFormat("json_schema", schema, "numbers")
    choices = await collect(await engine.generate(params(("user", "Count"), response_format=fmt)))
    assert json.loads(choices[0].content) == [1, 2, 3]
    assert fake.last["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"value": schema},
        "required": ["value"],
    }


async def test_an_answer_cut_short_is_passed_on_with_length(engine: Engine, fake: FakeAnthropic) -> None:
    events = reply(tool_use("toolu_01", "person", '{"name": "Ad'), stop_reason="max_tokens")
    fake.answer(Exchange(events=events))
    fmt = ResponseFormat("json_schema", PERSON, "person")
    choices = await collect(await engine.generate(params(("user", "Who?"), response_format=fmt, max_tokens=5)))
    assert choices[0].content == '{"name": "Ad'
    assert choices[0].finish_reason == "length"


async def test_json_schema_beside_tools_lets_the_model_call_either(engine: Engine, fake: FakeAnthropic) -> None:
    fmt = ResponseFormat("json_schema", PERSON, "get_weather")  # a name clashing with a client tool
    fake.answer(Exchange(events=reply(tool_use("toolu_01", "get_weather", '{"city": "Oslo"}'), stop_reason="tool_use")))
    choices = await collect(
        await engine.generate(params(("user", "Hi"), tools=(WEATHER,), tool_choice="auto", response_format=fmt))
    )
    body = fake.last
    assert [t["name"] for t in body["tools"]] == ["get_weather", "get_weather_"]
    assert body["tool_choice"] == {"type": "any"}  # some tool must be called: the answer tool is the text answer
    assert choices[0].calls[0].name == "get_weather"
    assert choices[0].finish_reason == "tool_calls"


async def test_a_forced_tool_choice_leaves_response_format_aside(engine: Engine, fake: FakeAnthropic) -> None:
    fmt = ResponseFormat("json_schema", PERSON, "person")
    fake.answer(Exchange(events=reply(tool_use("toolu_01", "get_weather", '{"city": "Oslo"}'), stop_reason="tool_use")))
    await collect(
        await engine.generate(params(("user", "Hi"), tools=(WEATHER,), tool_choice="required", response_format=fmt))
    )
    assert [t["name"] for t in fake.last["tools"]] == ["get_weather"]
    assert fake.last["tool_choice"] == {"type": "any"}


async def test_thinking_is_left_out_when_a_tool_is_forced(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(thinking_budget=1024, default_max_tokens=2048)
    fake.answer(Exchange(events=reply(tool_use("toolu_01", "json_response", "{}"), stop_reason="tool_use")))
    await collect(await engine.generate(params(("user", "Hi"), response_format=ResponseFormat("json_object"))))
    assert "thinking" not in fake.last  # Anthropic refuses thinking with a forced tool
    fake.answer(Exchange(events=reply(thinking("hmm"), text("hello"))))
    choices = await collect(await engine.generate(params(("user", "Hi"), tools=(WEATHER,), tool_choice="auto")))
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert choices[0].reasoning == "hmm"


async def test_no_thinking_when_max_tokens_leaves_no_room(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(thinking_budget=1024, default_max_tokens=2048)
    fake.answer(Exchange(events=reply(text("short"))))
    choices = await collect(await engine.generate(params(max_tokens=1024)))
    assert choices[0].content == "short"
    assert fake.last["max_tokens"] == 1024
    assert "thinking" not in fake.last  # Anthropic wants max_tokens above the budget, which it includes
    await collect(await engine.generate(params(max_tokens=1025)))
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_options_refuse_a_default_max_tokens_within_the_budget() -> None:
    from pipeserve.engines.anthropic.options import AnthropicOptions

    with pytest.raises(ValueError, match="must exceed thinking_budget"):
        AnthropicOptions(thinking_budget=4096, default_max_tokens=4096)
    with pytest.raises(ValueError, match="api_key_env"):
        AnthropicOptions(headers={"X-Api-Key": "sk-ant-inline"})
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        AnthropicOptions(api_key_env="sk-ant-api03-xyz")
