"""tools, tool_choice and legacy functions end to end."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pydantic
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


# --- schemas with no finite valid value ---------------------------------------------------------------------

NO_VALUE: list[tuple[dict[str, Any], str]] = [
    ({"$ref": "#"}, '"$ref": "#"'),
    ({"type": "object", "properties": {"self": {"$ref": "#"}}, "required": ["self"]}, "#/properties/self"),
    (
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 2}}, "required": ["a"]},
        "minimum 3",
    ),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, '"additionalProperties": false'),
]


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


@pytest.mark.parametrize(("parameters", "words"), NO_VALUE)
@pytest.mark.parametrize("choice", ["auto", "required", "named", "none"])
def test_tool_parameters_without_a_finite_value_are_a_400_naming_the_tool(
    client: openai.OpenAI, parameters: dict[str, Any], words: str, choice: str
) -> None:
    tools = [WEATHER, tool("broken", parameters)]
    tool_choice: Any = {"type": "function", "function": {"name": "broken"}} if choice == "named" else choice
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=tools, tool_choice=tool_choice, max_tokens=20)  # type: ignore[arg-type]
    body: Any = caught.value.body
    assert body["param"] == "tools[1].function.parameters"
    assert words in body["message"]


def test_legacy_function_parameters_without_a_finite_value_are_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            functions=[{"name": "broken", "parameters": {"$ref": "#"}}],  # type: ignore[list-item]
            max_tokens=20,
        )
    body: Any = caught.value.body
    assert body["param"].startswith("functions") and body["param"].endswith("parameters")
    assert '"$ref": "#"' in body["message"]


def test_parameters_with_local_refs_are_enforced_under_a_constrained_call(client: openai.OpenAI) -> None:
    parameters = {
        "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    }
    for choice in ("required", {"type": "function", "function": {"name": "weather"}}):
        response = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[tool("weather", parameters), ADD],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=0,
        )
        [call] = response.choices[0].message.tool_calls or []
        if call.function.name == "weather":
            jsonschema.validate(json.loads(call.function.arguments), parameters)


# --- a budget too small for the call --------------------------------------------------------------------------


class Sum(pydantic.BaseModel):
    a: int
    b: int


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_call_cut_by_the_budget_ends_with_length_plain_and_streamed_alike(client: openai.OpenAI, choice: str) -> None:
    tool_choice: Any = {"type": "function", "function": {"name": "add"}} if choice == "named" else "required"
    for budget in (2, 6, 12):
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Add 2 and 3."}],
            "tools": [ADD, WEATHER],
            "tool_choice": tool_choice,
            "max_tokens": budget,
            "temperature": 0,
        }
        plain = client.chat.completions.create(**kwargs)
        assert plain.choices[0].finish_reason == "length"
        assert plain.usage is not None and plain.usage.completion_tokens == budget
        with client.chat.completions.stream(**kwargs) as stream:
            for _ in stream:
                pass
            streamed = stream.current_completion_snapshot.choices[0]
        assert streamed.finish_reason == "length"
        for message in (plain.choices[0].message, streamed.message):
            # Cut before a name: the text so far as content; after it: the calls named, arguments as cut.
            assert bool(message.tool_calls) != bool(message.content)
            for call in message.tool_calls or []:
                assert call.id.startswith("call_") and call.function.name in ("add", "get_weather")


def test_parse_with_tools_raises_the_sdks_length_error_when_the_budget_is_too_small(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Add 2 and 3."}],
            tools=[openai.pydantic_function_tool(Sum)],
            tool_choice="required",
            max_tokens=4,
        )


# --- parallel_tool_calls false under tool_choice auto -----------------------------------------------------------

# The model copies text it is asked to: these prompts make it write call blocks.
BLOCKS = (
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}</tool_call>'
)
COPY = ["Reply with exactly this text and nothing else: " + BLOCKS, "Repeat exactly: " + BLOCKS]


def test_parallel_tool_calls_false_gives_at_most_one_call_under_auto(client: openai.OpenAI) -> None:
    most_allowed, most_single = 0, 0
    for prompt in COPY:
        for seed in range(3):
            kwargs: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "tools": TOOLS,
                "max_tokens": 80,
                "temperature": 0 if seed == 0 else 0.7,
                "seed": seed,
            }
            allowed = client.chat.completions.create(**kwargs, parallel_tool_calls=True).choices[0]
            most_allowed = max(most_allowed, len(allowed.message.tool_calls or []))
            single = client.chat.completions.create(**kwargs, parallel_tool_calls=False).choices[0]
            calls = single.message.tool_calls or []
            assert len(calls) <= 1
            if calls:
                assert single.finish_reason == "tool_calls"
                assert_calls_valid(calls)
            with client.chat.completions.stream(**kwargs, parallel_tool_calls=False) as stream:
                for _ in stream:
                    pass
                streamed = stream.current_completion_snapshot.choices[0]
            assert len(streamed.message.tool_calls or []) <= 1
            assert streamed.finish_reason == ("tool_calls" if streamed.message.tool_calls else streamed.finish_reason)
            most_single = max(most_single, len(calls))
    # Not vacuous: the prompts make several calls where they may, and the one allowed where they may not.
    assert most_allowed >= 2
    assert most_single == 1


# --- streams begin as OpenAI's do --------------------------------------------------------------------------------


def chunks(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.chat.completions.create(model=MODEL, stream=True, **kwargs))


def assert_opens_with_role(stream: list[Any], index: int = 0) -> Any:
    """The choice's first chunk carries the role, and no other chunk of it does; that first delta."""
    deltas = [c.choices[0].delta for c in stream if c.choices and c.choices[0].index == index]
    assert deltas[0].role == "assistant"
    assert all(delta.role is None for delta in deltas[1:])
    return deltas[0]


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_constrained_call_stream_opens_with_the_role_and_the_call_head(client: openai.OpenAI, choice: str) -> None:
    tool_choice: Any = {"type": "function", "function": {"name": "get_weather"}} if choice == "named" else "required"
    stream = chunks(client, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=80, temperature=0)
    first = assert_opens_with_role(stream)
    assert first.content is None
    [head] = first.tool_calls
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name in ("get_weather", "add") and head.function.arguments == ""


def test_a_legacy_function_call_stream_opens_with_the_role_and_the_name(client: openai.OpenAI) -> None:
    stream = chunks(
        client,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        functions=[ADD["function"]],
        function_call={"name": "add"},
        max_tokens=60,
    )
    first = assert_opens_with_role(stream)
    assert first.content is None
    assert first.function_call is not None
    assert (first.function_call.name, first.function_call.arguments) == ("add", "")


def test_an_auto_stream_opens_with_the_role_and_whatever_comes_first(client: openai.OpenAI) -> None:
    for prompt in COPY:
        stream = chunks(
            client, messages=[{"role": "user", "content": prompt}], tools=TOOLS, max_tokens=80, temperature=0
        )
        first = assert_opens_with_role(stream)
        if first.tool_calls:
            assert first.content is None and first.tool_calls[0].function.arguments == ""
        elif any(c.choices and c.choices[0].delta.content for c in stream[1:]):
            assert first.content  # the first content, not an empty opener


def test_a_plain_text_stream_still_opens_with_role_and_empty_content(client: openai.OpenAI) -> None:
    stream = chunks(client, messages=ASK, max_tokens=5)
    first = assert_opens_with_role(stream)
    assert first.content == "" and first.tool_calls is None


def test_each_choice_opens_with_its_own_call_head(client: openai.OpenAI) -> None:
    stream = chunks(client, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60, n=2, seed=3)
    for index in (0, 1):
        first = assert_opens_with_role(stream, index)
        assert first.tool_calls[0].function.name == "get_weather"


def test_a_streamed_call_carries_the_logprob_of_every_token(client: openai.OpenAI) -> None:
    stream = chunks(
        client,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=[ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=60,
        temperature=0,
        logprobs=True,
    )
    tokens = [t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    )
    # The tokens' text is the call the constraint generated, whose arguments the stream sent.
    assert "".join(tokens) == '{"name": "add", "arguments": ' + arguments + "}"
