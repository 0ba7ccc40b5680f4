"""What the engine sends Anthropic for a chat completion, as the fake server received it."""

from __future__ import annotations

from typing import Any

import pytest

from pipeserve.engines.base import Engine
from pipeserve.errors import InvalidRequestError, UnsupportedParameterError
from pipeserve.params import ChatMessage, SamplingParams, ToolCall, ToolSpec
from tests.engines.anthropic.conftest import KEY, MODEL, MakeEngine, collect, params
from tests.engines.anthropic.shapes import check_request
from tests.fake_anthropic import FakeAnthropic

WEATHER = ToolSpec("get_weather", "Weather of a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = ToolSpec("get_time", None, {"properties": {}})


async def send(
    engine: Engine, fake: FakeAnthropic, *messages: ChatMessage | tuple[str, str], **fields: Any
) -> dict[str, Any]:
    """Run a request to its end; the body the fake server received, checked against the SDK's shapes."""
    await collect(await engine.generate(params(*messages, **fields)))
    body = fake.last
    check_request(body)
    return body


async def test_plain_request_and_headers(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(headers={"anthropic-beta": "fake-beta-1"}, default_max_tokens=321)
    body = await send(engine, fake, ("user", "Hi"))
    assert body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True,
        "max_tokens": 321,  # Anthropic requires one: the option's, as the client set none
    }
    headers = fake.received[-1].headers
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "fake-beta-1"


async def test_upstream_model_name_and_client_fields(make_engine: MakeEngine, fake: FakeAnthropic) -> None:
    engine = await make_engine(model="claude-upstream-name", anthropic_version="2099-01-01")
    sampling = SamplingParams(temperature=0.3, top_p=0.9)
    body = await send(engine, fake, ("user", "Hi"), max_tokens=50, sampling=sampling, stop=("END", "\n\n"), user="u-7")
    assert body["model"] == "claude-upstream-name"
    assert body["max_tokens"] == 50
    assert (body["temperature"], body["top_p"]) == (0.3, 0.9)
    assert body["stop_sequences"] == ["END", "\n\n"]
    assert body["metadata"] == {"user_id": "u-7"}
    assert fake.received[-1].headers["anthropic-version"] == "2099-01-01"


async def test_system_and_developer_messages_join_the_system_prompt(engine: Engine, fake: FakeAnthropic) -> None:
    body = await send(
        engine,
        fake,
        ("system", "You are terse."),
        ("developer", "Answer in French."),
        ("user", "Hi"),
        ("user", "How are you?"),
        ("assistant", "Bien."),
        ("system", "Now answer in German."),  # in the middle: joins the system prompt too, in order
        ("user", "And now?"),
    )
    assert body["system"] == "You are terse.\n\nAnswer in French.\n\nNow answer in German."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "How are you?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Bien."}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]


async def test_tool_history_becomes_tool_use_and_tool_result_blocks(engine: Engine, fake: FakeAnthropic) -> None:
    calls = (
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call.2:x", "get_time", ""),  # an id Anthropic would refuse; no arguments
    )
    body = await send(
        engine,
        fake,
        ("user", "Weather and time?"),
        ChatMessage("assistant", "Let me look.", tool_calls=calls, reasoning="I should call both tools."),
        ChatMessage("tool", "18 C", tool_call_id="call_1"),
        ChatMessage("tool", "", tool_call_id="call.2:x"),
        ("user", "Thanks. Summarise."),
        tools=(WEATHER, TIME),
        tool_choice="auto",
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time?"}]},
        {
            "role": "assistant",
            # The reasoning is left out: Anthropic takes past thinking only with its signature.
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2_x", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",  # both results and the next user message: one turn, results first
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C"},
                {"type": "tool_result", "tool_use_id": "call_2_x"},
                {"type": "text", "text": "Thanks. Summarise."},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},  # `type` added
    ]
    assert body["tool_choice"] == {"type": "auto"}


async def test_results_given_before_a_user_message_still_come_first(engine: Engine, fake: FakeAnthropic) -> None:
    body = await send(
        engine,
        fake,
        ("user", "Go"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "get_time", "{}"),)),
        ("user", "Hurry."),
        ChatMessage("tool", "noon", tool_call_id="c1"),
        tools=(TIME,),
        tool_choice="auto",
    )
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "noon"},
        {"type": "text", "text": "Hurry."},
    ]
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "c1", "name": "get_time", "input": {}}]


async def test_legacy_function_calls_get_unique_matching_ids(engine: Engine, fake: FakeAnthropic) -> None:
    def legacy(arguments: str) -> ChatMessage:
        return ChatMessage("assistant", "", tool_calls=(ToolCall("call_function", "get_weather", arguments),))

    body = await send(
        engine,
        fake,
        ("user", "Paris?"),
        legacy('{"city": "Paris"}'),
        ChatMessage("function", "18 C", name="get_weather"),
        ("user", "Rome?"),
        legacy('{"city": "Rome"}'),
        ChatMessage("function", "25 C", name="get_weather"),
        tools=(WEATHER,),
        tool_choice="auto",
        legacy_functions=True,
        parallel_tool_calls=False,
    )
    turns = body["messages"]
    first, second = turns[1]["content"][0]["id"], turns[3]["content"][0]["id"]
    assert first != second
    assert turns[2]["content"][0] == {"type": "tool_result", "tool_use_id": first, "content": "18 C"}
    assert turns[4]["content"][0] == {"type": "tool_result", "tool_use_id": second, "content": "25 C"}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_a_function_result_without_its_call_is_a_400(engine: Engine, fake: FakeAnthropic) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(params(("user", "Hi"), ChatMessage("function", "18 C", name="get_weather")))
    assert caught.value.param == "messages[1]"
    assert fake.received == []


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]"])
async def test_bad_tool_call_arguments_are_a_400_naming_the_message(
    engine: Engine, fake: FakeAnthropic, arguments: str
) -> None:
    call = ToolCall("c1", "get_weather", arguments)
    request = params(("user", "Hi"), ChatMessage("assistant", "", tool_calls=(call,)), tools=(WEATHER,))
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(request)
    assert caught.value.status_code == 400
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    assert "messages[1]" in caught.value.message
    assert fake.received == []  # refused before anything was sent


@pytest.mark.parametrize(
    ("choice", "name", "parallel", "expected"),
    [
        ("auto", None, True, {"type": "auto"}),
        ("none", None, True, {"type": "none"}),
        ("required", None, True, {"type": "any"}),
        ("named", "get_time", False, {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}),
        ("auto", None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", None, False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
async def test_tool_choice(
    engine: Engine,
    fake: FakeAnthropic,
    choice: str,
    name: str | None,
    parallel: bool,
    expected: dict[str, Any],
) -> None:
    body = await send(
        engine,
        fake,
        ("user", "Hi"),
        tools=(WEATHER, TIME),
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=parallel,
    )
    assert body["tool_choice"] == expected
    assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]


async def test_without_tools_no_tool_fields_are_sent(engine: Engine, fake: FakeAnthropic) -> None:
    body = await send(engine, fake, ("user", "Hi"), tool_choice="none", parallel_tool_calls=False)
    assert "tools" not in body and "tool_choice" not in body


async def test_defaults_of_sampling_are_not_sent(engine: Engine, fake: FakeAnthropic) -> None:
    body = await send(engine, fake, ("user", "Hi"), sampling=SamplingParams(temperature=1.0, top_p=1.0))
    assert "temperature" not in body and "top_p" not in body


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_temperature_within_anthropics_range_is_sent_as_is(
    engine: Engine, fake: FakeAnthropic, temperature: float
) -> None:
    body = await send(engine, fake, ("user", "Hi"), sampling=SamplingParams(temperature=temperature, top_p=0.5))
    assert body.get("temperature", 1.0) == temperature


async def test_temperature_above_one_is_a_400(engine: Engine, fake: FakeAnthropic) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(params(sampling=SamplingParams(temperature=1.5)))
    assert caught.value.param == "temperature"
    assert "0 and 1" in caught.value.message
    assert fake.received == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sampling", SamplingParams(presence_penalty=0.5)),
        ("sampling", SamplingParams(frequency_penalty=-0.5)),
        ("sampling", SamplingParams(seed=7)),
        ("sampling", SamplingParams(logit_bias=((100, 5.0),))),
        ("logprobs", True),
    ],
)
async def test_fields_anthropic_lacks_are_a_400(engine: Engine, fake: FakeAnthropic, field: str, value: object) -> None:
    with pytest.raises(UnsupportedParameterError) as caught:
        await engine.generate(params(**{field: value}))
    assert caught.value.status_code == 400
    assert caught.value.param in {"presence_penalty", "frequency_penalty", "seed", "logit_bias", "logprobs"}
    assert fake.received == []


def test_capabilities_turn_down_what_anthropic_lacks() -> None:
    from pipeserve.engines.anthropic.engine import AnthropicEngine
    from pipeserve.settings import ModelConfig

    engine = AnthropicEngine(ModelConfig(id=MODEL, engine="anthropic"), max_waiting=1)
    caps = engine.capabilities
    assert (caps.logprobs, caps.seed, caps.logit_bias, caps.reasoning) == (False, False, False, False)
    assert caps.tools and caps.structured_output and caps.parallel_tool_calls
    assert caps.tool_choice == {"none", "auto", "required", "named"}


async def test_only_system_messages_is_a_400(engine: Engine, fake: FakeAnthropic) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(params(("system", "Be nice.")))
    assert caught.value.param == "messages"


async def test_empty_messages_are_dropped(engine: Engine, fake: FakeAnthropic) -> None:
    body = await send(engine, fake, ("user", "Hi"), ("assistant", ""), ("user", "Hello?"))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Hello?"}]}
    ]
