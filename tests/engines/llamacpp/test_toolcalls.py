"""Tool calls: the constraint schema, the generic prompt format, and parsing of constrained and free text."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from pipeserve.engines.llamacpp.toolcalls import (
    CALL_CLOSE,
    CALL_OPEN,
    AutoCallStream,
    CallReader,
    OneCall,
    called_names,
    calls_schema,
    first_call_end,
    parse_auto,
    parse_constrained,
    render_call,
    tools_prompt,
)
from pipeserve.params import ToolCall, ToolSpec

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ADD = ToolSpec(
    name="add",
    description="Add two integers",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
NAMES = {WEATHER.name, ADD.name}


def block(name: Any, arguments: Any) -> str:
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + CALL_CLOSE


def signature(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(call.name, call.arguments) for call in calls]


def valid(schema: dict[str, Any], value: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(value))


# ---------------------------------------------------------------------------------------------------------
# calls_schema
# ---------------------------------------------------------------------------------------------------------


def test_one_tool_schema_is_the_call_object() -> None:
    schema = calls_schema((WEATHER,), parallel=False)
    assert schema["type"] == "object"
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER.parameters
    assert set(schema["required"]) == {"name", "arguments"}
    assert schema["additionalProperties"] is False
    assert valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "add", "arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "get_weather", "arguments": {}})
    assert not valid(schema, {"name": "get_weather"})
    assert not valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}, "extra": 1})
    assert not valid(schema, [{"name": "get_weather", "arguments": {"city": "Paris"}}])


def test_tool_without_parameters_takes_any_object() -> None:
    schema = calls_schema((ToolSpec(name="ping", description=None, parameters={}),), parallel=False)
    assert schema["properties"]["arguments"] == {"type": "object"}
    assert valid(schema, {"name": "ping", "arguments": {}})
    assert not valid(schema, {"name": "ping", "arguments": "x"})


def test_several_tools_schema_is_any_of_their_calls() -> None:
    schema = calls_schema((WEATHER, ADD), parallel=False)
    assert list(schema) == ["anyOf"]
    names = [option["properties"]["name"]["const"] for option in schema["anyOf"]]
    assert names == ["get_weather", "add"]
    assert [option["properties"]["arguments"] for option in schema["anyOf"]] == [WEATHER.parameters, ADD.parameters]
    assert valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}})
    assert valid(schema, {"name": "add", "arguments": {"a": 1, "b": 2}})
    assert not valid(schema, {"name": "add", "arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "other", "arguments": {}})


@pytest.mark.parametrize("tools", [(WEATHER,), (WEATHER, ADD)])
def test_parallel_schema_is_a_non_empty_array_of_calls(tools: tuple[ToolSpec, ...]) -> None:
    schema = calls_schema(tools, parallel=True)
    assert schema["type"] == "array"
    assert schema["minItems"] == 1
    assert schema["items"] == calls_schema(tools, parallel=False)
    assert valid(schema, [{"name": "get_weather", "arguments": {"city": "Paris"}}] * 2)
    assert not valid(schema, [])
    assert not valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}})


DEFS = ToolSpec(
    name="plan",
    description=None,
    parameters={
        "$defs": {
            "step": {"type": "object", "properties": {"do": {"type": "string"}, "then": {"$ref": "#/$defs/next"}}},
            "next": {"anyOf": [{"$ref": "#/$defs/step"}, {"type": "null"}]},
        },
        "type": "object",
        "properties": {"first": {"$ref": "#/$defs/step"}},
        "required": ["first"],
    },
)


@pytest.mark.parametrize("parallel", [False, True])
def test_parameters_with_local_refs_keep_their_meaning_inside_the_call_schema(parallel: bool) -> None:
    schema = calls_schema((WEATHER, DEFS), parallel=parallel)
    good = {"name": "plan", "arguments": {"first": {"do": "a", "then": {"do": "b", "then": None}}}}
    bad = {"name": "plan", "arguments": {"first": {"do": "a", "then": {"do": 1}}}}
    assert valid(schema, [good] if parallel else good)
    assert not valid(schema, [bad] if parallel else bad)
    assert DEFS.parameters["properties"]["first"] == {"$ref": "#/$defs/step"}  # the tool's own schema is untouched
    assert called_names(schema) == ["get_weather", "plan"]


@pytest.mark.parametrize("parallel", [False, True])
def test_called_names(parallel: bool) -> None:
    assert called_names(calls_schema((ADD,), parallel=parallel)) == ["add"]
    assert called_names(calls_schema((WEATHER, ADD), parallel=parallel)) == ["get_weather", "add"]


# ---------------------------------------------------------------------------------------------------------
# parse_constrained
# ---------------------------------------------------------------------------------------------------------


def test_parse_constrained_one_object() -> None:
    calls = parse_constrained('{"name": "get_weather", "arguments": {"city": "Zürich"}}')
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].arguments == '{"city": "Zürich"}'
    assert calls[0].id.startswith("call_")
    assert len(calls[0].id) > len("call_")


def test_parse_constrained_a_list_keeps_order_and_gives_distinct_ids() -> None:
    text = json.dumps(
        [
            {"name": "add", "arguments": {"a": 1, "b": 2}},
            {"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}},
        ]
    )
    calls = parse_constrained(text)
    assert signature(calls) == [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Paris", "days": [1, 2]}')]
    assert all(call.id.startswith("call_") for call in calls)
    assert len({call.id for call in calls}) == 2


def test_parse_constrained_keeps_the_arguments_as_generated() -> None:
    # A stream sends argument text as it is generated, so the plain response carries the same text.
    calls = parse_constrained('{ "name" : "add" ,\n "arguments" : { "a" :1,"b":  2, "c": "\\u00e9" } }')
    assert signature(calls) == [("add", '{ "a" :1,"b":  2, "c": "\\u00e9" }')]
    assert json.loads(calls[0].arguments) == {"a": 1, "b": 2, "c": "é"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ('[{"name": "ad', []),
        ('{"name": "add"', [("add", "")]),
        ('{"name": "add", "arguments": {"a": 1, "b"', [("add", '{"a": 1, "b"')]),
        (
            '[{"name": "add", "arguments": {}}, {"name": "get_weather", "arguments": ',
            [("add", "{}"), ("get_weather", "")],
        ),
    ],
)
def test_parse_constrained_of_truncated_json_gives_the_calls_named_so_far(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert signature(parse_constrained(text)) == expected


def call_json(rng: random.Random) -> str:
    calls = [
        rng.choice(
            [
                {"name": "add", "arguments": {"a": rng.randint(-9, 9), "b": rng.randint(0, 9)}},
                {"name": "get_weather", "arguments": {"city": rng.choice(["Paris", "Zürich", '"}]{[', "\\"])}},
                {"name": "get_weather", "arguments": {"city": "x", "days": [1, {"d": [[]]}], "n": None}},
            ]
        )
        for _ in range(rng.randint(1, 3))
    ]
    return json.dumps(calls if len(calls) > 1 or rng.random() < 0.5 else calls[0], ensure_ascii=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(100))
def test_call_reader_streams_what_parse_constrained_returns(seed: int) -> None:
    rng = random.Random(seed)
    text = call_json(rng)
    text = text[: rng.randint(0, len(text))] if rng.random() < 0.5 else text
    reader = CallReader()
    streamed: list[list[str]] = []
    for piece in random_slices(rng, text):
        for kind, value in reader.feed(piece):
            if kind == "call":
                streamed.append([value, ""])
            else:
                assert streamed, "arguments before their call's name"
                streamed[-1][1] += value
    assert [tuple(pair) for pair in streamed] == signature(parse_constrained(text)) == signature(reader.calls())
    if text == call_json(random.Random(seed)):  # whole: the arguments are the values, as JSON
        value = json.loads(text)
        assert [json.loads(a) for _, a in streamed] == [
            c["arguments"] for c in (value if isinstance(value, list) else [value])
        ]


# ---------------------------------------------------------------------------------------------------------
# parse_auto
# ---------------------------------------------------------------------------------------------------------


def test_parse_auto_picks_out_known_calls_and_keeps_the_rest_as_content() -> None:
    text = "Let me check. " + block("get_weather", {"city": "Paris"}) + " and " + block("add", {"a": 1, "b": 2}) + "!"
    content, calls = parse_auto(text, NAMES)
    assert content == "Let me check.  and !"
    assert signature(calls) == [("get_weather", '{"city": "Paris"}'), ("add", '{"a": 1, "b": 2}')]
    assert all(call.id.startswith("call_") for call in calls)
    assert len({call.id for call in calls}) == 2


def test_parse_auto_allows_whitespace_inside_the_block() -> None:
    text = CALL_OPEN + '\n  {"name": "add", "arguments": {"a": 1, "b": 2}}\n' + CALL_CLOSE
    content, calls = parse_auto(text, NAMES)
    assert content is None
    assert signature(calls) == [("add", '{"a": 1, "b": 2}')]


@pytest.mark.parametrize("around", [("", ""), ("\n", "\n"), ("  ", "\t\n")])
def test_parse_auto_content_is_none_when_only_whitespace_remains(around: tuple[str, str]) -> None:
    content, calls = parse_auto(around[0] + block("add", {"a": 1, "b": 2}) + around[1], NAMES)
    assert content is None
    assert signature(calls) == [("add", '{"a": 1, "b": 2}')]


def test_parse_auto_reserialises_non_ascii_arguments() -> None:
    text = CALL_OPEN + '{"name":"get_weather","arguments":{"city":"S\\u00e3o Paulo"}}' + CALL_CLOSE
    _, calls = parse_auto(text, NAMES)
    assert signature(calls) == [("get_weather", '{"city": "São Paulo"}')]


@pytest.mark.parametrize(
    "bad",
    [
        block("unknown_tool", {"a": 1}),
        CALL_OPEN + '{"name": "add", "arguments": {"a": 1,}}' + CALL_CLOSE,
        CALL_OPEN + "not json at all" + CALL_CLOSE,
        CALL_OPEN + CALL_CLOSE,
        block("add", '{"a": 1, "b": 2}'),
        block("add", [1, 2]),
        block("add", None),
        CALL_OPEN + '{"name": "add"}' + CALL_CLOSE,
        CALL_OPEN + '["add", {"a": 1}]' + CALL_CLOSE,
        CALL_OPEN + json.dumps({"name": 1, "arguments": {}}) + CALL_CLOSE,
    ],
)
def test_parse_auto_leaves_blocks_that_are_not_calls_in_the_content(bad: str) -> None:
    text = "Before " + bad + " middle " + block("add", {"a": 1, "b": 2}) + " after"
    content, calls = parse_auto(text, NAMES)
    assert content == "Before " + bad + " middle  after"
    assert signature(calls) == [("add", '{"a": 1, "b": 2}')]

    content, calls = parse_auto(bad, NAMES)
    assert (content, calls) == (bad, [])


@pytest.mark.parametrize("name", [["add"], {"tool": "add"}])
def test_parse_auto_leaves_blocks_with_an_unhashable_name_in_the_content(name: Any) -> None:
    bad = block(name, {"a": 1, "b": 2})
    assert parse_auto("x " + bad, NAMES) == ("x " + bad, [])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Just an answer.",
        "Unclosed " + CALL_OPEN + '{"name": "add", "arguments": {"a": 1, "b": 2}}',
        "Stray " + CALL_CLOSE + " close",
        "<tool_call",
        "a < b and <tool> is not a call",
    ],
)
def test_parse_auto_without_blocks_returns_the_text_unchanged(text: str) -> None:
    assert parse_auto(text, NAMES) == (text, [])


def test_parse_auto_ignores_calls_when_no_tool_is_known() -> None:
    text = block("add", {"a": 1, "b": 2})
    assert parse_auto(text, set()) == (text, [])


def test_parse_auto_with_a_limit_ends_the_answer_with_the_last_call_allowed() -> None:
    text = "A " + block("unknown", {}) + " B " + block("add", {"a": 1, "b": 2}) + " C " + block("add", {"a": 3, "b": 4})
    content, calls = parse_auto(text, NAMES, limit=1)
    assert content == "A " + block("unknown", {}) + " B "
    assert signature(calls) == [("add", '{"a": 1, "b": 2}')]
    assert parse_auto("only text", NAMES, limit=1) == ("only text", [])


def test_parse_auto_leading_takes_only_a_call_that_opens_the_answer() -> None:
    call = block("add", {"a": 1, "b": 2})
    assert signature(parse_auto(" \n" + call + " after", NAMES, leading=True)[1]) == [("add", '{"a": 1, "b": 2}')]
    for text in ("Sure. " + call, block("unknown", {}) + call, CALL_OPEN + "{}" + CALL_CLOSE + call):
        assert parse_auto(text, NAMES, leading=True) == (text, [])


ONE = OneCall(frozenset(NAMES))
LEADING = OneCall(frozenset(NAMES), leading=True)


def first_end_fed(text: str, rule: OneCall) -> tuple[int | None, int]:
    """first_call_end fed one character at a time, as ChoiceState calls it: the end, and when it was found."""
    start: int | None = 0
    for cut in range(len(text) + 1):
        if start is None:
            return None, cut
        found, start = first_call_end(text[:cut], rule, start)
        if found is not None:
            return found, cut
    return None, len(text)


def test_first_call_end_finds_the_end_of_the_first_complete_call() -> None:
    first = "Hi " + block("unknown", {}) + " " + block("add", {"a": 1, "b": 2})
    text = first + " rest " + block("add", {"a": 3, "b": 4})
    assert first_call_end(text, ONE)[0] == len(first)
    assert first_end_fed(text, ONE) == (len(first), len(first))


def test_first_call_end_leading_gives_up_once_content_comes_first() -> None:
    call = "\n" + block("add", {"a": 1, "b": 2})
    assert first_end_fed(call + " rest", LEADING) == (len(call), len(call))
    assert first_end_fed("Hi " + call, LEADING) == (None, 2)  # "H" can't open a block: no call can come
    assert first_end_fed(block("unknown", {}) + call, LEADING)[0] is None


# ---------------------------------------------------------------------------------------------------------
# AutoCallStream
# ---------------------------------------------------------------------------------------------------------


def run_stream(stream: AutoCallStream, pieces: list[str]) -> list[str | ToolCall]:
    events: list[str | ToolCall] = []
    for piece in pieces:
        events += stream.feed(piece)
    return events + stream.finish()


def random_slices(rng: random.Random, text: str) -> list[str]:
    pieces: list[str] = []
    position = 0
    while position < len(text):
        size = rng.choice([0, 1, 1, 2, 3, 5, 8, 13])
        pieces.append(text[position : position + size])
        position += size
    return pieces


def random_auto_text(rng: random.Random) -> str:
    fragments = [
        lambda: rng.choice(["Hello", " world", "Sure! ", "\n", "é≈🙂", "x", "  ", "a < b", ">"]),
        lambda: block("get_weather", {"city": rng.choice(["Paris", "Zürich", "東京", "<b>"])}),
        lambda: block("add", {"a": rng.randint(-5, 5), "b": rng.randint(0, 9)}),
        lambda: CALL_OPEN + "\n" + json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}}) + "\n" + CALL_CLOSE,
        lambda: block("unknown", {"a": 1}),
        lambda: block("add", "not an object"),
        lambda: CALL_OPEN + "{broken" + CALL_CLOSE,
        lambda: rng.choice(["<", "<t", "<tool", "<tool_call", "<tool_c x", "</tool_call>", "<<tool_call"]),
    ]
    parts = [rng.choice(fragments)() for _ in range(rng.randint(0, 8))]
    if rng.random() < 0.2:
        parts.append(CALL_OPEN + '{"name": "add", "arguments": {"a": 1')  # unclosed at the end
    return "".join(parts)


def assert_stream_agrees(text: str, pieces: list[str]) -> None:
    assert "".join(pieces) == text
    events = run_stream(AutoCallStream(NAMES), pieces)
    content, calls = parse_auto(text, NAMES)
    streamed = "".join(event for event in events if isinstance(event, str))
    streamed_calls = [event for event in events if isinstance(event, ToolCall)]
    if content is None:  # parse_auto drops content that is only whitespace around calls; a stream cannot
        assert calls
        assert streamed.strip() == ""
    else:
        assert streamed == content
    assert signature(streamed_calls) == signature(calls)
    assert all(call.id.startswith("call_") for call in streamed_calls)
    assert all(event != "" for event in events)


@pytest.mark.parametrize("seed", range(200))
def test_stream_in_random_slices_agrees_with_parse_auto(seed: int) -> None:
    rng = random.Random(seed)
    text = random_auto_text(rng)
    assert_stream_agrees(text, random_slices(rng, text))


@pytest.mark.parametrize("seed", range(20))
def test_stream_one_character_at_a_time_agrees_with_parse_auto(seed: int) -> None:
    text = random_auto_text(random.Random(1000 + seed))
    assert_stream_agrees(text, list(text))


def test_stream_in_one_piece_agrees_with_parse_auto() -> None:
    text = "Sure. " + block("add", {"a": 1, "b": 2}) + block("unknown", {}) + " <tool"
    assert_stream_agrees(text, [text])


@pytest.mark.parametrize("seed", range(60))
def test_stream_with_a_limit_agrees_with_parse_auto(seed: int) -> None:
    rng = random.Random(seed)
    text = random_auto_text(rng)
    events = run_stream(AutoCallStream(NAMES, limit=1), random_slices(rng, text))
    content, calls = parse_auto(text, NAMES, limit=1)
    streamed = "".join(event for event in events if isinstance(event, str))
    assert streamed == content or (content is None and not streamed.strip())
    assert signature([e for e in events if isinstance(e, ToolCall)]) == signature(calls)


@pytest.mark.parametrize("seed", range(60))
def test_stream_with_leading_calls_agrees_with_parse_auto(seed: int) -> None:
    rng = random.Random(seed)
    text = random_auto_text(rng)
    if rng.random() < 0.5:
        text = rng.choice(["", " ", "\n"]) + block("add", {"a": 1, "b": 2}) + text
    events = run_stream(AutoCallStream(NAMES, limit=1, leading=True), random_slices(rng, text))
    content, calls = parse_auto(text, NAMES, limit=1, leading=True)
    streamed = "".join(event for event in events if isinstance(event, str))
    assert streamed == content or (content is None and not streamed.strip())
    assert signature([e for e in events if isinstance(e, ToolCall)]) == signature(calls)


def test_stream_keeps_content_and_calls_in_order() -> None:
    text = "A" + block("add", {"a": 1, "b": 2}) + "B" + block("get_weather", {"city": "Paris"}) + "C"
    events = run_stream(AutoCallStream(NAMES), [text])
    kinds = [event if isinstance(event, str) else event.name for event in events]
    assert kinds == ["A", "add", "B", "get_weather", "C"]


def test_stream_holds_back_a_possible_block_start() -> None:
    stream = AutoCallStream(NAMES)
    assert stream.feed("a <tool") == ["a "]
    assert stream.feed("_ca") == []
    assert stream.finish() == ["<tool_ca"]
    assert stream.finish() == []


def test_stream_releases_held_text_once_it_cannot_start_a_block() -> None:
    stream = AutoCallStream(NAMES)
    assert stream.feed("x<") == ["x"]
    assert "".join(str(event) for event in stream.feed(" y")) == "< y"
    assert stream.feed("<tool_cal") == []
    assert "".join(str(event) for event in stream.feed("m")) == "<tool_calm"
    assert stream.finish() == []


def test_stream_holds_an_open_block_until_it_closes() -> None:
    stream = AutoCallStream(NAMES)
    assert stream.feed("Hi " + CALL_OPEN) == ["Hi "]
    assert stream.feed('{"name": "add", "arguments": {"a": 1, "b": 2}}') == []
    assert stream.feed("</tool_") == []
    events = stream.feed("call> bye")
    assert len(events) == 2
    call, rest = events
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("add", '{"a": 1, "b": 2}')
    assert call.id.startswith("call_")
    assert rest == " bye"
    assert stream.finish() == []


def test_stream_releases_a_block_that_is_not_a_call_as_content() -> None:
    bad = block("unknown", {"a": 1})
    stream = AutoCallStream(NAMES)
    assert "".join(str(event) for event in stream.feed(bad + "z")) == bad + "z"
    assert stream.finish() == []


def test_stream_finish_flushes_an_unclosed_block() -> None:
    stream = AutoCallStream(NAMES)
    unclosed = CALL_OPEN + '{"name": "add", "arguments": {'
    assert stream.feed("ok " + unclosed) == ["ok "]
    assert stream.finish() == [unclosed]


# ---------------------------------------------------------------------------------------------------------
# render_call and tools_prompt
# ---------------------------------------------------------------------------------------------------------


def test_render_call_writes_the_generic_block() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Zürich"}')
    text = render_call(call)
    assert text == '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>'
    _, calls = parse_auto(text, NAMES)
    assert signature(calls) == [("get_weather", '{"city": "Zürich"}')]


def test_render_call_keeps_arguments_that_are_not_json_as_a_string() -> None:
    text = render_call(ToolCall(id="call_1", name="add", arguments="{oops"))
    assert text.startswith(CALL_OPEN) and text.endswith(CALL_CLOSE)
    assert json.loads(text[len(CALL_OPEN) : -len(CALL_CLOSE)]) == {"name": "add", "arguments": "{oops"}


def test_tools_prompt_lists_the_tools_and_the_call_format() -> None:
    prompt = tools_prompt((WEATHER, ADD))
    for tool in (WEATHER, ADD):
        assert tool.name in prompt
        assert tool.description is not None and tool.description in prompt
        assert json.dumps(tool.parameters) in prompt
    assert CALL_OPEN in prompt and CALL_CLOSE in prompt
    assert '"arguments"' in prompt and '"name"' in prompt
    assert prompt.index(WEATHER.name) < prompt.index(ADD.name)


def test_tools_prompt_lines_are_json_objects() -> None:
    prompt = tools_prompt((WEATHER, ToolSpec(name="ping", description=None, parameters={})))
    listed = prompt.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in listed] == [
        {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        {"name": "ping", "description": "", "parameters": {}},
    ]
