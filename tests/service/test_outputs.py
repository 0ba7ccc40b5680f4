"""What a choice's text becomes on the wire, whole (final_message) and streamed (StreamShaper).

The streamed deltas, accumulated by the `openai` SDK, must give the same message as the plain response.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from pipeserve.params import ChatParams, OutputMode, ToolSpec
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.outputs import StreamShaper, final_message
from pipeserve.structured.tools import CALL_CLOSE, CALL_OPEN

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ADD = ToolSpec(
    name="add",
    description=None,
    parameters={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)
TOOLS = (WEATHER, ADD)


def params(output: OutputMode, *, legacy: bool = False) -> ChatParams:
    return ChatParams(model="m", messages=(), tools=TOOLS, output=output, legacy_functions=legacy)


def block(name: str, arguments: dict[str, Any]) -> str:
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + CALL_CLOSE


def dumps(deltas: list[wire.ChunkDelta]) -> list[dict[str, Any]]:
    return [delta.model_dump() for delta in deltas]


def assert_no_none(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, key
            assert_no_none(item)
    elif isinstance(value, list):
        for item in value:
            assert_no_none(item)


def stream(
    chat: ChatParams, pieces: list[str], engine_finish: str
) -> tuple[wire.ChunkDelta, list[wire.ChunkDelta], list[wire.ChunkDelta], str]:
    """first(), the deltas of every feed(), and finish()'s deltas and reason."""
    shaper = StreamShaper(chat)
    first = shaper.first()
    fed = [delta for piece in pieces for delta in shaper.feed(piece)]
    rest, reason = shaper.finish(engine_finish)
    return first, fed, rest, reason


def sdk_accumulate(deltas: list[wire.ChunkDelta], finish_reason: str) -> Any:
    """The choice the `openai` SDK builds from these deltas sent as chunks (the last one with the reason)."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    chunks = [wire.ChunkChoice(index=0, delta=delta) for delta in deltas]
    chunks.append(wire.ChunkChoice(index=0, delta=wire.ChunkDelta(), finish_reason=finish_reason))  # type: ignore[arg-type]
    for choice in chunks:
        chunk = wire.ChatCompletionChunk(id="chatcmpl-1", created=0, model="m", choices=[choice])
        list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk.model_dump())))
    # The snapshot, not get_final_completion(): that one refuses to parse a completion cut at `length`.
    return state.current_completion_snapshot.choices[0]


def assert_stream_matches_final(chat: ChatParams, text: str, pieces: list[str], engine_finish: str) -> None:
    message, final_reason = final_message(chat, text, engine_finish)
    first, fed, rest, reason = stream(chat, pieces, engine_finish)
    deltas = [first, *fed, *rest]
    for delta in deltas:
        assert_no_none(delta.model_dump())
    choice = sdk_accumulate(deltas, reason)

    assert reason == final_reason
    assert choice.finish_reason == final_reason
    assert choice.message.role == "assistant"
    # The first delta carries content "" in text and auto modes, where the plain response may have null.
    assert (choice.message.content or None) == (message.content or None)
    if message.tool_calls is None:
        assert not choice.message.tool_calls
    else:
        streamed = [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        plain = [(c.type, c.function.name, c.function.arguments) for c in message.tool_calls]
        assert streamed == plain
        assert all(c.id.startswith("call_") for c in choice.message.tool_calls)
        assert len({c.id for c in choice.message.tool_calls}) == len(plain)
    if message.function_call is None:
        assert choice.message.function_call is None
    else:
        assert choice.message.function_call is not None
        assert choice.message.function_call.name == message.function_call.name
        assert choice.message.function_call.arguments == message.function_call.arguments


def random_slices(rng: random.Random, text: str) -> list[str]:
    pieces: list[str] = []
    position = 0
    while position < len(text):
        size = rng.choice([0, 1, 2, 3, 5, 8, 13, 21])
        pieces.append(text[position : position + size])
        position += size
    return pieces


# ---------------------------------------------------------------------------------------------------------
# final_message
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_text_is_content_and_the_finish_passes_through(engine_finish: str) -> None:
    text = "Hello " + block("add", {"a": 1, "b": 2})
    message, reason = final_message(params("text"), text, engine_finish)
    assert message.content == text
    assert message.tool_calls is None and message.function_call is None
    assert reason == engine_finish


def test_tool_json_becomes_tool_calls() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Zürich"}}'
    message, reason = final_message(params("tool_json"), text, "stop")
    assert reason == "tool_calls"
    assert message.content is None
    assert message.function_call is None
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Zürich"}')


def test_tool_json_list_becomes_parallel_tool_calls() -> None:
    text = '[{"name":"add","arguments":{"a":1,"b":2}},{"name":"get_weather","arguments":{"city":"Paris"}}]'
    message, reason = final_message(params("tool_json"), text, "stop")
    assert reason == "tool_calls"
    assert message.tool_calls is not None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("add", '{"a": 1, "b": 2}'),
        ("get_weather", '{"city": "Paris"}'),
    ]
    assert len({c.id for c in message.tool_calls}) == 2


def test_tool_json_with_legacy_functions_becomes_a_function_call() -> None:
    text = '[{"name":"add","arguments":{"a":1,"b":2}},{"name":"get_weather","arguments":{"city":"Paris"}}]'
    message, reason = final_message(params("tool_json", legacy=True), text, "stop")
    assert reason == "function_call"
    assert message.content is None
    assert message.tool_calls is None
    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == ("add", '{"a": 1, "b": 2}')


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("output", ["tool_json", "auto_tools"])
def test_a_truncated_call_keeps_finish_length(output: OutputMode, legacy: bool) -> None:
    call = {"name": "add", "arguments": {"a": 1}}
    text = json.dumps(call) if output == "tool_json" else CALL_OPEN + json.dumps(call) + CALL_CLOSE
    message, reason = final_message(params(output, legacy=legacy), text, "length")
    assert reason == "length"
    assert (message.function_call if legacy else message.tool_calls) is not None


def test_auto_tools_picks_out_calls() -> None:
    text = "Let me look. " + block("get_weather", {"city": "Paris"}) + block("add", {"a": 1, "b": 2})
    message, reason = final_message(params("auto_tools"), text, "stop")
    assert reason == "tool_calls"
    assert message.content == "Let me look. "
    assert message.function_call is None
    assert message.tool_calls is not None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("get_weather", '{"city": "Paris"}'),
        ("add", '{"a": 1, "b": 2}'),
    ]
    assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)


def test_auto_tools_with_only_calls_has_null_content() -> None:
    message, reason = final_message(params("auto_tools"), block("add", {"a": 1, "b": 2}) + "\n", "stop")
    assert reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None and len(message.tool_calls) == 1


def test_auto_tools_with_legacy_functions_gives_the_first_call() -> None:
    text = "Ok " + block("get_weather", {"city": "Paris"}) + block("add", {"a": 1, "b": 2})
    message, reason = final_message(params("auto_tools", legacy=True), text, "stop")
    assert reason == "function_call"
    assert message.content == "Ok "
    assert message.tool_calls is None
    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == ("get_weather", '{"city": "Paris"}')


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
@pytest.mark.parametrize(
    "text", ["Just text.", block("unknown", {"a": 1}), "Unclosed " + CALL_OPEN + '{"name": "add"', ""]
)
def test_auto_tools_without_calls_is_plain_content(text: str, engine_finish: str) -> None:
    message, reason = final_message(params("auto_tools"), text, engine_finish)
    assert message.content == text
    assert message.tool_calls is None and message.function_call is None
    assert reason == engine_finish


# ---------------------------------------------------------------------------------------------------------
# StreamShaper
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_first_delta(legacy: bool) -> None:
    assert StreamShaper(params("tool_json", legacy=legacy)).first().model_dump() == {"role": "assistant"}
    for output in ("text", "auto_tools"):
        first = StreamShaper(params(output, legacy=legacy)).first()  # type: ignore[arg-type]
        assert first.model_dump() == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_text_stream_is_content_deltas(engine_finish: str) -> None:
    shaper = StreamShaper(params("text"))
    assert dumps(shaper.feed("Hel")) == [{"content": "Hel"}]
    assert shaper.feed("") == []
    assert dumps(shaper.feed(CALL_OPEN)) == [{"content": CALL_OPEN}]
    assert shaper.finish(engine_finish) == ([], engine_finish)


def test_tool_json_stream_sends_the_calls_at_the_finish() -> None:
    shaper = StreamShaper(params("tool_json"))
    text = '[{"name":"add","arguments":{"a":1,"b":2}},{"name":"get_weather","arguments":{"city":"Paris"}}]'
    for piece in (text[:10], text[10:40], text[40:]):
        assert shaper.feed(piece) == []
    deltas, reason = shaper.finish("stop")
    assert reason == "tool_calls"
    dumped = dumps(deltas)
    ids = [d["tool_calls"][0].get("id") for d in dumped]
    assert all(ids[i].startswith("call_") for i in (0, 2)) and ids[0] != ids[2]
    assert dumped == [
        {"tool_calls": [{"index": 0, "id": ids[0], "type": "function", "function": {"name": "add", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1, "b": 2}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": ids[2], "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Paris"}'}}]},
    ]


def test_tool_json_stream_with_legacy_functions_sends_one_function_call() -> None:
    shaper = StreamShaper(params("tool_json", legacy=True))
    text = '[{"name":"add","arguments":{"a":1,"b":2}},{"name":"get_weather","arguments":{"city":"Paris"}}]'
    assert shaper.feed(text) == []
    deltas, reason = shaper.finish("stop")
    assert reason == "function_call"
    assert dumps(deltas) == [
        {"function_call": {"name": "add", "arguments": ""}},
        {"function_call": {"arguments": '{"a": 1, "b": 2}'}},
    ]


def test_tool_json_stream_keeps_finish_length() -> None:
    shaper = StreamShaper(params("tool_json"))
    shaper.feed('{"name":"add","arguments":{}}')
    deltas, reason = shaper.finish("length")
    assert reason == "length"
    assert len(deltas) == 2


def test_auto_stream_emits_content_then_the_call_once_its_block_closes() -> None:
    shaper = StreamShaper(params("auto_tools"))
    assert dumps(shaper.feed("Let me check. <tool")) == [{"content": "Let me check. "}]
    assert shaper.feed('_call>{"name": "get_weather", ') == []
    assert shaper.feed('"arguments": {"city": "Paris"}}</tool_') == []
    dumped = dumps(shaper.feed("call>"))
    assert len(dumped) == 2
    head, body = dumped
    call_id = head["tool_calls"][0]["id"]
    assert call_id.startswith("call_")
    assert head == {
        "tool_calls": [
            {"index": 0, "id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ]
    }
    assert body == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}
    dumped = dumps(shaper.feed(" Done " + block("add", {"a": 1, "b": 2})))
    assert dumped[0] == {"content": " Done "}
    assert [d["tool_calls"][0]["index"] for d in dumped[1:]] == [1, 1]
    assert dumped[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": ""}
    assert shaper.finish("stop") == ([], "tool_calls")


def test_auto_stream_finish_flushes_held_text() -> None:
    shaper = StreamShaper(params("auto_tools"))
    assert dumps(shaper.feed("a <tool")) == [{"content": "a "}]
    deltas, reason = shaper.finish("stop")
    assert dumps(deltas) == [{"content": "<tool"}]
    assert reason == "stop"


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_auto_stream_without_calls_keeps_the_engine_finish(engine_finish: str) -> None:
    shaper = StreamShaper(params("auto_tools"))
    bad = block("unknown", {"a": 1})
    assert "".join(d.content or "" for d in shaper.feed("Hi " + bad)) == "Hi " + bad
    assert shaper.finish(engine_finish) == ([], engine_finish)


def test_auto_stream_with_a_call_and_finish_length_keeps_length() -> None:
    shaper = StreamShaper(params("auto_tools"))
    shaper.feed(block("add", {"a": 1, "b": 2}))
    assert shaper.finish("length") == ([], "length")


def test_auto_stream_with_legacy_functions_sends_only_the_first_call() -> None:
    shaper = StreamShaper(params("auto_tools", legacy=True))
    deltas = shaper.feed(block("get_weather", {"city": "Paris"}) + block("add", {"a": 1, "b": 2}))
    assert dumps(deltas) == [
        {"function_call": {"name": "get_weather", "arguments": ""}},
        {"function_call": {"arguments": '{"city": "Paris"}'}},
    ]
    assert shaper.finish("stop") == ([], "function_call")


def test_delta_dumps_drop_unset_fields_at_every_level() -> None:
    delta = wire.ChunkDelta(tool_calls=[wire.ChunkToolCall(index=0, function=wire.ChunkFunction(arguments="{}"))])
    assert delta.model_dump() == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
    assert json.loads(delta.model_dump_json()) == delta.model_dump()
    assert wire.ChunkDelta().model_dump() == {}


# ---------------------------------------------------------------------------------------------------------
# The stream, accumulated by the openai SDK, equals the plain response
# ---------------------------------------------------------------------------------------------------------


def random_auto_text(rng: random.Random) -> str:
    fragments = [
        lambda: rng.choice(["Hello", " world", "Sure! ", "\n", "é≈🙂", "a < b", "<", "<tool", "</tool_call>"]),
        lambda: block("get_weather", {"city": rng.choice(["Paris", "Zürich", "東京"])}),
        lambda: block("add", {"a": rng.randint(-5, 5), "b": rng.randint(0, 9)}),
        lambda: block("unknown", {"a": 1}),
        lambda: CALL_OPEN + "{broken" + CALL_CLOSE,
    ]
    text = rng.choice(["Ok.", "Let me see:", "Hmm"]) + "".join(rng.choice(fragments)() for _ in range(6))
    if rng.random() < 0.2:
        text += CALL_OPEN + '{"name": "add"'
    return text


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("seed", range(60))
def test_auto_stream_accumulates_to_the_final_message(seed: int, legacy: bool) -> None:
    rng = random.Random(seed)
    text = random_auto_text(rng)
    assert_stream_matches_final(params("auto_tools", legacy=legacy), text, random_slices(rng, text), "stop")


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
@pytest.mark.parametrize(
    "text",
    [
        block("add", {"a": 1, "b": 2}),
        block("add", {"a": 1, "b": 2}) + block("get_weather", {"city": "Zürich"}),
        "Text " + block("add", {"a": 1, "b": 2}) + " more",
        "No calls at all",
        "",
    ],
)
@pytest.mark.parametrize("legacy", [False, True])
def test_auto_stream_examples_accumulate_to_the_final_message(text: str, engine_finish: str, legacy: bool) -> None:
    chat = params("auto_tools", legacy=legacy)
    assert_stream_matches_final(chat, text, list(text), engine_finish)
    assert_stream_matches_final(chat, text, [text], engine_finish)


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Zürich"}}',
        '[{"name":"add","arguments":{"a":1,"b":2}},{"name":"get_weather","arguments":{"city":"Paris"}}]',
    ],
)
def test_tool_json_stream_accumulates_to_the_final_message(text: str, legacy: bool, engine_finish: str) -> None:
    rng = random.Random(text)
    chat = params("tool_json", legacy=legacy)
    assert_stream_matches_final(chat, text, random_slices(rng, text), engine_finish)


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
@pytest.mark.parametrize("seed", range(10))
def test_text_stream_accumulates_to_the_final_message(seed: int, engine_finish: str) -> None:
    rng = random.Random(seed)
    text = random_auto_text(rng)
    assert_stream_matches_final(params("text"), text, random_slices(rng, text), engine_finish)


@pytest.mark.parametrize("legacy", [False, True])
def test_auto_stream_whitespace_around_calls_accumulates_to_the_final_message(legacy: bool) -> None:
    text = "\n" + block("add", {"a": 1, "b": 2}) + "\n"
    assert final_message(params("auto_tools", legacy=legacy), text, "stop")[0].content is None
    assert_stream_matches_final(params("auto_tools", legacy=legacy), text, [text], "stop")
