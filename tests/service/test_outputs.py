"""`ChoiceOutput`: what a choice's typed deltas become for the client, here for engines that report content and
calls together (an upstream engine, given a legacy-functions request as tools, may answer with both)."""

from __future__ import annotations

from typing import Any

from pipeserve.engines.base import Delta, ToolCallFragment
from pipeserve.params import ChatParams, ToolSpec
from pipeserve.service.outputs import ChoiceOutput

WEATHER = ToolSpec(
    name="get_weather",
    description=None,
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
HEAD = ToolCallFragment(0, "call_0", "get_weather", "")
ARGUMENTS = ToolCallFragment(0, None, None, '{"city": "Paris"}')


def chat(*, legacy: bool) -> ChatParams:
    return ChatParams(model="m", messages=(), tools=(WEATHER,), tool_choice="auto", legacy_functions=legacy)


def streamed(output: ChoiceOutput, deltas: list[Delta]) -> list[dict[str, Any]]:
    """The chunk deltas a client is sent, the finishing one included, as JSON."""
    sent = []
    for delta in deltas:
        shaped = output.chunk(delta)
        if shaped is not None:
            sent.append(shaped[0].model_dump(exclude_none=True))
        if delta.finish_reason is not None:
            finish = output.finish()
            sent.append({**finish.delta.model_dump(exclude_none=True), "finish_reason": finish.finish_reason})
    return sent


def test_a_legacy_answer_that_begins_as_content_stays_content() -> None:
    output = ChoiceOutput(0, chat(legacy=True))
    sent = streamed(
        output,
        [
            Delta(0, content="Let me see."),
            Delta(0, tool_calls=[HEAD]),
            Delta(0, tool_calls=[ARGUMENTS]),
            Delta(0, finish_reason="tool_calls"),
        ],
    )
    assert sent[0] == {"role": "assistant", "content": "Let me see."}
    assert not any("function_call" in delta for delta in sent)
    assert sent[-1]["finish_reason"] == "stop"
    message = output.message()
    assert message.content == "Let me see." and message.function_call is None
    assert output.wire_finish == "stop"


def test_a_legacy_call_after_whitespace_opens_the_stream() -> None:
    output = ChoiceOutput(0, chat(legacy=True))
    sent = streamed(
        output,
        [
            Delta(0, content="\n "),
            Delta(0, tool_calls=[HEAD]),
            Delta(0, tool_calls=[ARGUMENTS]),
            Delta(0, content=" Done."),
            Delta(0, finish_reason="tool_calls"),
        ],
    )
    assert sent[0] == {"role": "assistant", "function_call": {"name": "get_weather", "arguments": ""}}
    assert not any("content" in delta for delta in sent[:-1])
    assert sent[-1]["finish_reason"] == "function_call"
    message = output.message()
    assert message.content is None
    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == ("get_weather", '{"city": "Paris"}')


def test_whitespace_waits_and_then_goes_out_with_the_content() -> None:
    output = ChoiceOutput(0, chat(legacy=True))
    sent = streamed(output, [Delta(0, content="\n"), Delta(0, content="Hi"), Delta(0, finish_reason="stop")])
    assert sent[0] == {"role": "assistant", "content": "\nHi"}
    assert output.message().content == "\nHi"


def test_a_legacy_answer_of_whitespace_alone_is_kept() -> None:
    output = ChoiceOutput(0, chat(legacy=True))
    output.add(Delta(0, content=" "))
    output.add(Delta(0, content="\n", finish_reason="stop"))
    assert output.message().content == " \n"


def test_tools_answers_keep_content_and_calls_together() -> None:
    output = ChoiceOutput(0, chat(legacy=False))
    for delta in [
        Delta(0, content="Let me see."),
        Delta(0, tool_calls=[HEAD, ARGUMENTS]),
        Delta(0, finish_reason="tool_calls"),
    ]:
        output.add(delta)
    message = output.message()
    assert message.content == "Let me see."
    assert message.tool_calls is not None and message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert output.wire_finish == "tool_calls"
