"""response_format end to end: the content is valid when the budget allows a valid document (closed in
time when it runs out), truncated with finish_reason `length` when it doesn't, and a schema with no valid
value is a 400."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from tests.conftest import MODEL, Server
from tests.structured.schemas import random_schema

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "height": {"type": "number"},
        "role": {"enum": ["engineer", "artist", "farmer"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "skills": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["name", "age", "height", "role", "address", "skills"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a fictional person as JSON."}]


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def assert_valid(text: str | None, schema: dict[str, Any]) -> Any:
    assert text is not None
    value = json.loads(text)
    jsonschema.Draft202012Validator(schema, format_checker=CHECKER).validate(value)
    return value


def test_json_object(client: openai.OpenAI) -> None:
    for stream in (False, True):
        kwargs: dict[str, Any] = {"model": MODEL, "messages": ASK, "response_format": {"type": "json_object"}}
        if stream:
            chunks = client.chat.completions.create(**kwargs, max_tokens=40, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(**kwargs, max_tokens=40).choices[0].message.content or ""
        assert isinstance(json.loads(text), dict)


def test_json_schema_nested_objects_arrays_enums_numbers(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=schema_format(PERSON),
        max_tokens=200,
        temperature=0,  # type: ignore[arg-type]
    )
    assert_valid(response.choices[0].message.content, PERSON)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        response_format=schema_format(PERSON),  # type: ignore[arg-type]
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == response.choices[0].message.content


@pytest.mark.parametrize("budget", [45, 46, 50, 55, 60, 75, 90])
def test_a_short_budget_still_gives_valid_json_with_finish_length(client: openai.OpenAI, budget: int) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=schema_format(PERSON),
        max_tokens=budget,
        seed=budget,  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert_valid(choice.message.content, PERSON)
    assert response.usage is not None and response.usage.completion_tokens <= budget
    if choice.finish_reason == "length":
        # Closed when the next token would have left too few to close the document: at the budget, or a few
        # tokens short of it when that token's text needed a longer closing (Guide.take).
        assert budget - 8 <= response.usage.completion_tokens <= budget
    else:
        assert choice.finish_reason == "stop"


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


@pytest.mark.parametrize("budget", [1, 5])
def test_a_budget_too_small_for_a_valid_object_is_truncated_with_finish_length(
    client: openai.OpenAI, budget: int
) -> None:
    # As OpenAI answers: no error, the output as far as the budget went, finish_reason `length`.
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format=schema_format(PERSON), max_tokens=budget, temperature=0
    )
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == budget
    text = choice.message.content or ""
    assert text.startswith("{") and PERSON["required"][-1] not in text  # cut short of the last property
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, response_format=schema_format(PERSON), max_tokens=budget, temperature=0
    ) as stream:
        for _ in stream:
            pass
        streamed = stream.current_completion_snapshot.choices[0]
    assert streamed.finish_reason == "length"
    assert (streamed.message.content or "").startswith("{")


@pytest.mark.parametrize("budget", [1, 5])
def test_parse_raises_the_sdks_length_error_when_the_budget_is_too_small(client: openai.OpenAI, budget: int) -> None:
    messages: Any = [{"role": "user", "content": "Describe Paris as JSON."}]
    for parse in (client.chat.completions.parse, client.beta.chat.completions.parse):
        with pytest.raises(openai.LengthFinishReasonError) as caught:
            parse(model=MODEL, messages=messages, response_format=City, max_tokens=budget)
        completion = caught.value.completion
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.completion_tokens == budget


LINKED = {
    "type": "object",
    "properties": {"value": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
    "required": ["value", "next"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("budget", [12, 16, 24, 200])
def test_a_recursive_schema_with_a_way_out_is_closed_by_its_base_case(client: openai.OpenAI, budget: int) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "A linked list of three numbers as JSON."}],
        response_format=schema_format(LINKED),
        max_tokens=budget,
        seed=budget,
    )
    assert_valid(response.choices[0].message.content, LINKED)
    assert response.usage is not None and response.usage.completion_tokens <= budget


# Schemas with no finite valid value, each with words of its message; the same kinds as in
# tests/structured/test_instances.py, here through the server, plain and streamed.
UNSATISFIABLE: list[tuple[dict[str, Any], str]] = [
    ({"$ref": "#"}, '"$ref": "#"'),
    ({"anyOf": [{"$ref": "#"}]}, "#/anyOf/0"),
    ({"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}, "#/properties/next"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "$ref"),
    ({"not": {}}, '"not"'),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "`false`"),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, '"additionalProperties": false'),
    ({"type": "string", "enum": [1]}, '"enum"'),
    ({"const": "x", "type": "integer"}, '"const"'),
    ({"allOf": [{"type": "string"}, {"type": "number"}]}, '"type"'),
    ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems 3"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum 5"),
    ({"type": "integer", "minimum": 0.2, "maximum": 0.8}, "integer"),
    ({"type": "object", "maxProperties": 1, "required": ["a", "b"]}, "maxProperties"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}, "#/$defs/nowhere"),
    # llguidance's own verdict: no string of length 3 matches ^a$
    ({"type": "string", "pattern": "^a$", "minLength": 3}, "Unsatisfiable"),
]


@pytest.mark.parametrize(("schema", "words"), UNSATISFIABLE)
@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_without_a_finite_value_is_a_400_naming_it(
    client: openai.OpenAI, schema: dict[str, Any], words: str, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ASK, response_format=schema_format(schema), max_tokens=30, stream=stream
        )  # type: ignore[call-overload]
    body: Any = caught.value.body
    assert body["param"] == "response_format.json_schema.schema"
    assert body["type"] == "invalid_request_error"
    assert words in body["message"]


async def test_fifty_random_schemas_all_yield_valid_output(server: Server) -> None:
    client = server.async_client()
    rng = random.Random(2026)
    schemas = [random_schema(rng) for _ in range(50)]
    gate = asyncio.Semaphore(10)

    async def run(index: int, schema: dict[str, Any]) -> None:
        async with gate:
            response = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Answer with JSON for item {index}."}],
                response_format=schema_format(schema),  # type: ignore[arg-type]
                max_tokens=rng.choice([60, 80, 120]),
                seed=index,
            )
        assert_valid(response.choices[0].message.content, schema)

    await asyncio.gather(*(run(i, s) for i, s in enumerate(schemas)))


def test_n_choices_are_each_valid(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=schema_format(PERSON),
        max_tokens=120,
        n=3,  # type: ignore[arg-type]
    )
    assert len(response.choices) == 3
    for choice in response.choices:
        assert_valid(choice.message.content, PERSON)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"not": {"type": "string"}}, "not"),
    ],
)
def test_a_keyword_that_cannot_be_enforced_is_a_400_naming_it(
    client: openai.OpenAI, schema: dict[str, Any], words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, response_format=schema_format(schema), max_tokens=30)  # type: ignore[arg-type]
    assert words in caught.value.body["message"]  # type: ignore[index]
    assert caught.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]


def test_an_invalid_schema_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            response_format=schema_format({"type": "nonsense"}),
            max_tokens=30,  # type: ignore[arg-type]
        )
    assert caught.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]


def test_stop_with_structured_output_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ASK, response_format={"type": "json_object"}, stop=["}"], max_tokens=30
        )
    assert caught.value.body["param"] == "stop"  # type: ignore[index]


def test_text_format_is_unconstrained(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20, temperature=0)
    text = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=20, temperature=0, response_format={"type": "text"}
    )
    assert text.choices[0].message.content == plain.choices[0].message.content
