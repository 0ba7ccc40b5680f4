"""What a choice's text becomes: the llama.cpp engine's `ChoiceDecoder` turns it into typed deltas, which the
pipeline's `ChoiceOutput` adds up to a message (`final_message` below) or shapes into stream chunks (`Shaper`).

The streamed deltas, accumulated by the `openai` SDK, must give the same message as the plain response.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from pipeserve.engines.base import Delta
from pipeserve.engines.llamacpp.output import ChoiceDecoder, OutputMode
from pipeserve.engines.llamacpp.slots import TextDelta
from pipeserve.engines.llamacpp.toolcalls import CALL_CLOSE, CALL_OPEN
from pipeserve.params import ChatParams, ToolChoice, ToolSpec
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.outputs import ChoiceOutput

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


ADD_CALL = {"name": "add", "arguments": {"a": 1}}


def params(output: OutputMode, *, legacy: bool = False) -> ChatParams:
    choice: ToolChoice = {"text": "none", "auto_tools": "auto", "tool_json": "required"}[output]  # type: ignore[assignment]
    tools = () if output == "text" else TOOLS
    return ChatParams(model="m", messages=(), tools=tools, tool_choice=choice, legacy_functions=legacy)


class Shaper:
    """One choice's text fed piece by piece through the engine's decoder and the pipeline's stream shaping:
    the chunk deltas a client is sent."""

    def __init__(self, chat: ChatParams) -> None:
        self.decoder = ChoiceDecoder(0, chat)
        self.output = ChoiceOutput(0, chat)

    def opening(self) -> wire.ChunkDelta | None:
        """The delta the pipeline sends before anything is generated (`_bare_choice`'s opening), if any."""
        return wire.ChunkDelta(role="assistant", content="") if self.output.opening() else None

    def reasoning(self, text: str) -> wire.ChunkDelta:
        shaped = self.output.chunk(Delta(0, reasoning=text))
        assert shaped is not None
        return shaped[0]

    def feed(self, text: str) -> list[wire.ChunkDelta]:
        if self.decoder.finished:
            return []
        return self._shape(self.decoder.feed(TextDelta(0, text, 1)))

    def finish(self, engine_finish: str) -> tuple[list[wire.ChunkDelta], str]:
        deltas = (
            [] if self.decoder.finished else self._shape(self.decoder.feed(TextDelta(0, "", 0, None, engine_finish)))
        )
        return deltas, self.output.wire_finish

    def _shape(self, typed: list[Delta]) -> list[wire.ChunkDelta]:
        out = []
        for delta in typed:
            shaped = self.output.chunk(delta)
            if shaped is not None:
                out.append(shaped[0])
            if delta.finish_reason is not None:
                last = self.output.finish().delta
                if last != wire.ChunkDelta():
                    out.append(last)
        return out


def final_message(chat: ChatParams, text: str, engine_finish: str) -> tuple[wire.ResponseMessage, str]:
    """The plain response's message for this text."""
    decoder, output = ChoiceDecoder(0, chat), ChoiceOutput(0, chat)
    for delta in decoder.feed(TextDelta(0, text, 1, None, engine_finish)):
        output.add(delta)
    return output.message(), output.wire_finish


def one_call(chat: ChatParams) -> ChatParams:
    return dataclasses.replace(chat, parallel_tool_calls=False)


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


def stream(chat: ChatParams, pieces: list[str], engine_finish: str) -> tuple[list[wire.ChunkDelta], str]:
    """Every delta a stream sends for these pieces (the opening, each feed's, the finish's) and the reason."""
    shaper = Shaper(chat)
    opening = shaper.opening()
    deltas = [] if opening is None else [opening]
    deltas += [delta for piece in pieces for delta in shaper.feed(piece)]
    rest, reason = shaper.finish(engine_finish)
    return deltas + rest, reason


def assert_role_first(deltas: list[wire.ChunkDelta]) -> None:
    """The role comes once, on the first delta, which clients merge the others onto."""
    assert deltas
    assert [i for i, delta in enumerate(deltas) if delta.role is not None] == [0]
    assert deltas[0].role == "assistant"


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
    deltas, reason = stream(chat, pieces, engine_finish)
    assert_role_first(deltas)
    for delta in deltas:
        assert_no_none(delta.model_dump())
    if message.content is None and message.tool_calls:  # the role comes with the first call's head
        assert deltas[0].tool_calls is not None and deltas[0].tool_calls[0].id is not None
        assert deltas[0].tool_calls[0].function.name == message.tool_calls[0].function.name
    if message.content is None and message.function_call is not None:
        assert deltas[0].function_call is not None and deltas[0].function_call.name == message.function_call.name
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
    text = '[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]'
    message, reason = final_message(params("tool_json"), text, "stop")
    assert reason == "tool_calls"
    assert message.tool_calls is not None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("add", '{"a": 1, "b": 2}'),
        ("get_weather", '{"city": "Paris"}'),
    ]
    assert len({c.id for c in message.tool_calls}) == 2


def test_tool_json_with_legacy_functions_becomes_a_function_call() -> None:
    text = '[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]'
    message, reason = final_message(params("tool_json", legacy=True), text, "stop")
    assert reason == "function_call"
    assert message.content is None
    assert message.tool_calls is None
    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == ("add", '{"a": 1, "b": 2}')


@pytest.mark.parametrize("legacy", [False, True])
def test_a_constrained_call_cut_by_the_budget_keeps_finish_length(legacy: bool) -> None:
    message, reason = final_message(params("tool_json", legacy=legacy), json.dumps(ADD_CALL), "length")
    assert reason == "length"
    assert (message.function_call if legacy else message.tool_calls) is not None


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_constrained_json_gives_the_calls_named_so_far_with_their_text(legacy: bool) -> None:
    text = '[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Pa'
    message, reason = final_message(params("tool_json", legacy=legacy), text, "length")
    assert reason == "length"
    assert message.content is None
    if legacy:
        assert message.function_call is not None
        assert (message.function_call.name, message.function_call.arguments) == ("add", '{"a": 1, "b": 2}')
        return
    assert message.tool_calls is not None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("add", '{"a": 1, "b": 2}'),
        ("get_weather", '{"city": "Pa'),
    ]


@pytest.mark.parametrize("text", ["", '{"na', '{"name": "get_wea', '[{"name": "add'])
def test_constrained_json_cut_before_any_name_is_returned_as_content(text: str) -> None:
    message, reason = final_message(params("tool_json"), text, "length")
    assert reason == "length"
    assert message.tool_calls is None
    assert message.content == text


def test_an_auto_call_cut_by_the_budget_keeps_finish_length() -> None:
    message, reason = final_message(params("auto_tools"), CALL_OPEN + json.dumps(ADD_CALL) + CALL_CLOSE, "length")
    assert reason == "length"
    assert message.tool_calls is not None


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_parallel_tool_calls_false_ends_the_auto_answer_with_its_first_call(engine_finish: str) -> None:
    text = "Sure. " + block("get_weather", {"city": "Paris"}) + " and " + block("add", {"a": 1, "b": 2}) + " ramble"
    message, reason = final_message(one_call(params("auto_tools")), text, engine_finish)
    # What follows the one call allowed is dropped, as if generation had stopped there: nothing of the answer
    # was cut, whatever the budget did after it.
    assert reason == "tool_calls"
    assert message.content == "Sure. "
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("get_weather", '{"city": "Paris"}')
    ]


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_a_legacy_auto_answer_is_its_opening_function_call_or_content(engine_finish: str) -> None:
    chat = params("auto_tools", legacy=True)
    call, other = block("get_weather", {"city": "Paris"}), block("add", {"a": 1, "b": 2})
    message, reason = final_message(chat, "\n" + call + " and " + other + " ramble", engine_finish)
    assert reason == "function_call"
    assert message.content is None and message.tool_calls is None
    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == ("get_weather", '{"city": "Paris"}')
    # As OpenAI's legacy answers are one or the other (and the openpipe SDK's stream merger needs it so), a
    # block after content is content.
    message, reason = final_message(chat, "Sure. " + call, engine_finish)
    assert (message.content, message.function_call, reason) == ("Sure. " + call, None, engine_finish)


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
    text = block("get_weather", {"city": "Paris"}) + block("add", {"a": 1, "b": 2})
    message, reason = final_message(params("auto_tools", legacy=True), text, "stop")
    assert reason == "function_call"
    assert message.content is None
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
# Streams
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_only_plain_text_opens_before_any_text(legacy: bool) -> None:
    assert dumps([Shaper(params("text", legacy=legacy)).opening()]) == [{"role": "assistant", "content": ""}]  # type: ignore[list-item]
    assert Shaper(params("auto_tools", legacy=legacy)).opening() is None
    assert Shaper(params("tool_json", legacy=legacy)).opening() is None


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_text_stream_is_content_deltas(engine_finish: str) -> None:
    shaper = Shaper(params("text"))
    shaper.opening()
    assert dumps(shaper.feed("Hel")) == [{"content": "Hel"}]
    assert shaper.feed("") == []
    assert dumps(shaper.feed(CALL_OPEN)) == [{"content": CALL_OPEN}]
    assert shaper.finish(engine_finish) == ([], engine_finish)


def test_tool_json_stream_opens_with_the_role_and_the_call_head_then_streams_the_arguments() -> None:
    shaper = Shaper(params("tool_json"))
    assert shaper.feed('[{"name": "ad') == []
    head = dumps(shaper.feed('d", "argu'))
    call_id = head[0]["tool_calls"][0]["id"]
    assert call_id.startswith("call_")
    assert head == [
        {
            "role": "assistant",
            "tool_calls": [
                {"index": 0, "id": call_id, "type": "function", "function": {"name": "add", "arguments": ""}}
            ],
        }
    ]
    assert dumps(shaper.feed('ments": {"a": 1,')) == [
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1,'}}]}
    ]
    # The second call's head comes once its name is known, after the rest of the first call's arguments.
    dumped = dumps(shaper.feed(' "b": 2}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]'))
    second = dumped[1]["tool_calls"][0]
    assert dumped[0] == {"tool_calls": [{"index": 0, "function": {"arguments": ' "b": 2}'}}]}
    assert (
        second["index"] == 1
        and second["id"] != call_id
        and second["function"] == {"name": "get_weather", "arguments": ""}
    )
    assert dumped[2] == {"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Paris"}'}}]}
    assert shaper.finish("stop") == ([], "tool_calls")


def test_tool_json_stream_with_legacy_functions_sends_one_function_call() -> None:
    shaper = Shaper(params("tool_json", legacy=True))
    text = '[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert dumps(shaper.feed(text)) == [
        {"role": "assistant", "function_call": {"name": "add", "arguments": ""}},
        {"function_call": {"arguments": '{"a": 1, "b": 2}'}},
    ]
    assert shaper.finish("stop") == ([], "function_call")


def test_tool_json_stream_keeps_finish_length() -> None:
    shaper = Shaper(params("tool_json"))
    assert len(shaper.feed('{"name": "add", "arguments": {}}')) == 2
    assert shaper.finish("length") == ([], "length")


def test_tool_json_stream_cut_before_a_name_ends_with_the_text_as_content() -> None:
    shaper = Shaper(params("tool_json"))
    assert shaper.feed('{"name": "get_w') == []
    deltas, reason = shaper.finish("length")
    assert dumps(deltas) == [{"role": "assistant", "content": '{"name": "get_w'}]
    assert reason == "length"


def test_auto_stream_emits_content_then_the_call_once_its_block_closes() -> None:
    shaper = Shaper(params("auto_tools"))
    assert dumps(shaper.feed("Let me check. <tool")) == [{"role": "assistant", "content": "Let me check. "}]
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
    shaper = Shaper(params("auto_tools"))
    assert dumps(shaper.feed("a <tool")) == [{"role": "assistant", "content": "a "}]
    deltas, reason = shaper.finish("stop")
    assert dumps(deltas) == [{"content": "<tool"}]
    assert reason == "stop"


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
def test_auto_stream_without_calls_keeps_the_engine_finish(engine_finish: str) -> None:
    shaper = Shaper(params("auto_tools"))
    bad = block("unknown", {"a": 1})
    assert "".join(d.content or "" for d in shaper.feed("Hi " + bad)) == "Hi " + bad
    assert shaper.finish(engine_finish) == ([], engine_finish)


def test_auto_stream_with_a_call_and_finish_length_keeps_length() -> None:
    shaper = Shaper(params("auto_tools"))
    shaper.feed(block("add", {"a": 1, "b": 2}))
    assert shaper.finish("length") == ([], "length")


def test_auto_stream_opens_with_the_role_and_the_first_call_head() -> None:
    shaper = Shaper(params("auto_tools"))
    assert shaper.feed("\n") == []  # blank content: dropped if a call comes, so the role waits too
    head, body = dumps(shaper.feed(block("add", {"a": 1, "b": 2})))
    assert head["role"] == "assistant" and "content" not in head
    assert head["tool_calls"][0]["function"] == {"name": "add", "arguments": ""}
    assert body == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1, "b": 2}'}}]}


@pytest.mark.parametrize("output", ["auto_tools", "tool_json"])
def test_a_stream_with_no_text_still_sends_the_role(output: OutputMode) -> None:
    shaper = Shaper(params(output))
    deltas, reason = shaper.finish("stop")
    assert dumps(deltas) == [{"role": "assistant", "content": ""}]
    assert reason == "stop"


def test_reasoning_first_carries_the_role() -> None:
    shaper = Shaper(params("auto_tools"))
    assert dumps([shaper.reasoning("hmm")]) == [{"role": "assistant", "reasoning_content": "hmm"}]
    assert dumps(shaper.feed("Hi")) == [{"content": "Hi"}]


def test_auto_stream_with_one_call_allowed_drops_what_follows_it() -> None:
    shaper = Shaper(one_call(params("auto_tools")))
    deltas = shaper.feed("Ok " + block("add", {"a": 1, "b": 2}) + " more " + block("get_weather", {"city": "Paris"}))
    assert deltas[0].content == "Ok " and len(deltas) == 3
    assert shaper.feed(" and more") == []
    assert shaper.finish("length") == ([], "tool_calls")


def test_legacy_auto_stream_after_content_streams_blocks_as_content() -> None:
    shaper = Shaper(params("auto_tools", legacy=True))
    # No call can follow content: nothing is held back any more.
    assert dumps(shaper.feed("Ok <tool")) == [{"role": "assistant", "content": "Ok "}, {"content": "<tool"}]
    assert dumps(shaper.feed("_call>")) == [{"content": "_call>"}]
    assert shaper.finish("stop") == ([], "stop")


def test_auto_stream_with_legacy_functions_sends_only_the_first_call() -> None:
    shaper = Shaper(params("auto_tools", legacy=True))
    deltas = shaper.feed(block("get_weather", {"city": "Paris"}) + block("add", {"a": 1, "b": 2}))
    assert dumps(deltas) == [
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": ""}},
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
        '[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]',
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


@pytest.mark.parametrize("legacy", [False, True])
def test_constrained_json_cut_anywhere_accumulates_to_the_final_message(legacy: bool) -> None:
    calls = [
        {"name": "add", "arguments": {"a": 1, "b": [2, '}"']}},
        {"name": "get_weather", "arguments": {"city": "Zü"}},
    ]
    text = json.dumps(calls, ensure_ascii=False)
    rng = random.Random(7)
    for cut in range(len(text) + 1):
        chat = params("tool_json", legacy=legacy)
        assert_stream_matches_final(chat, text[:cut], random_slices(rng, text[:cut]), "length")


@pytest.mark.parametrize("engine_finish", ["stop", "length"])
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("seed", range(30))
def test_auto_stream_with_one_call_allowed_accumulates_to_the_final_message(
    seed: int, legacy: bool, engine_finish: str
) -> None:
    rng = random.Random(seed)
    text = random_auto_text(rng)
    chat = one_call(params("auto_tools", legacy=legacy))
    assert_stream_matches_final(chat, text, random_slices(rng, text), engine_finish)
    message, _ = final_message(chat, text, engine_finish)
    assert len(message.tool_calls or []) <= 1
