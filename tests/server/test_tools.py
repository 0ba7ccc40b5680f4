"""tools, tool_choice and legacy functions end to end."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]


def assert_calls_valid(calls: Any) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_makes_a_valid_call(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=80,
        temperature=0,  # greedy: a sampled call may ramble past its budget, and then ends with "length"
    )  # type: ignore[call-overload]
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert_calls_valid(choice.message.tool_calls)


def test_named_function_is_the_one_called_exactly_once(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=80,
    )
    calls = response.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1 and calls[0].function.name == "add"
    assert_calls_valid(calls)


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    for seed in range(3):
        response = client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            seed=seed,
        )
        calls = response.choices[0].message.tool_calls
        assert calls is not None and len(calls) == 1
        assert_calls_valid(calls)


def test_a_truncated_call_is_closed_validly_and_says_length(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=30,
        temperature=1.5,
        seed=1,  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert_calls_valid(choice.message.tool_calls)
    assert choice.finish_reason in ("length", "tool_calls")


def test_none_never_calls(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=20,  # type: ignore[arg-type]
    )
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in ("stop", "length")


def test_auto_answers_with_content_or_valid_calls(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60)  # type: ignore[arg-type]
    message = response.choices[0].message
    if message.tool_calls:
        assert response.choices[0].finish_reason == "tool_calls"
        assert_calls_valid(message.tool_calls)
    else:
        assert message.content


def test_streamed_calls_accumulate_to_the_plain_response(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 80,
        "temperature": 0,
    }
    plain = client.chat.completions.create(**kwargs).choices[0]
    with client.chat.completions.stream(**kwargs) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == plain.finish_reason == "tool_calls"
    assert final.message.content is None
    streamed = [(c.function.name, c.function.arguments) for c in final.message.tool_calls or []]
    assert streamed == [(c.function.name, c.function.arguments) for c in plain.message.tool_calls or []]
    assert all(c.id.startswith("call_") and c.type == "function" for c in final.message.tool_calls or [])


def test_round_trip_of_calls_and_results(client: openai.OpenAI) -> None:
    first = (
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=80,  # type: ignore[arg-type]
        )
        .choices[0]
        .message
    )
    assert first.tool_calls
    conversation = [
        *ASK,
        first.model_dump(exclude_none=True),
        *[{"role": "tool", "tool_call_id": c.id, "content": '{"temperature": 21}'} for c in first.tool_calls],
    ]
    answer = client.chat.completions.create(model=MODEL, messages=conversation, tools=TOOLS, max_tokens=30)  # type: ignore[arg-type]
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls
    assert answer.usage is not None
    short = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=1)  # type: ignore[arg-type]
    assert short.usage is not None and answer.usage.prompt_tokens > short.usage.prompt_tokens + 20


def test_legacy_functions(client: openai.OpenAI) -> None:
    functions = [ADD["function"]]
    named = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        functions=functions,  # type: ignore[arg-type]
        function_call={"name": "add"},
        max_tokens=60,
    )
    choice = named.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None and choice.message.content is None
    assert choice.message.function_call is not None and choice.message.function_call.name == "add"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), SCHEMAS["add"])
    none = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        functions=functions,
        function_call="none",
        max_tokens=10,  # type: ignore[arg-type]
    )
    assert none.choices[0].message.function_call is None


def test_legacy_function_call_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        functions=[ADD["function"]],  # type: ignore[list-item]
        function_call={"name": "add"},
        max_tokens=60,
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.function_call:
            name += delta.function_call.name or ""
            arguments += delta.function_call.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "add" and finish == "function_call"
    jsonschema.validate(json.loads(arguments), SCHEMAS["add"])


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"function_call": {"name": "add"}}, "function_call"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"tools": TOOLS, "functions": [ADD["function"]]}, "functions"),
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
    ],
)
def test_invalid_combinations(client: openai.OpenAI, change: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **change)  # type: ignore[arg-type]
    assert caught.value.body["param"] == param  # type: ignore[index]
