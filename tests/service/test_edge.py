"""to_params: wire request to ChatParams, defaults, message flattening and 400s that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from pipeserve.errors import PipeserveError
from pipeserve.params import DEFAULTS, ChatMessage, ChatParams, SamplingParams, ToolCall
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.service.edge import to_params

HELLO = [{"role": "user", "content": "Hi"}]


def params(**fields: Any) -> ChatParams:
    body = {"model": "m", "messages": HELLO, **fields}
    return to_params(ChatCompletionRequest.model_validate(body))


def rejected(**fields: Any) -> PipeserveError:
    with pytest.raises(PipeserveError) as info:
        params(**fields)
    assert info.value.status_code == 400
    assert info.value.error_type == "invalid_request_error"
    return info.value


def messages(*wire: dict[str, Any]) -> tuple[ChatMessage, ...]:
    return params(messages=list(wire)).messages


def test_unset_and_null_fields_take_the_defaults() -> None:
    names = ["n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs"]
    nulls = dict.fromkeys([*names, "stream", "stop", "max_tokens", "metadata", "logit_bias", "user", "seed"])
    for result in (params(), params(**nulls)):
        assert result.n == DEFAULTS["n"]
        assert result.sampling == SamplingParams(
            temperature=DEFAULTS["temperature"],
            top_p=DEFAULTS["top_p"],
            presence_penalty=DEFAULTS["presence_penalty"],
            frequency_penalty=DEFAULTS["frequency_penalty"],
        )
        assert (result.logprobs, result.top_logprobs) == (DEFAULTS["logprobs"], DEFAULTS["top_logprobs"])
        assert (result.stream, result.include_usage) == (DEFAULTS["stream"], DEFAULTS["include_usage"])
        assert (result.max_tokens, result.stop, result.metadata, result.user) == (None, (), {}, None)


def test_given_values_are_kept() -> None:
    result = params(
        n=3,
        temperature=0.2,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=7,
        logprobs=True,
        top_logprobs=4,
        stream=True,
        stream_options={"include_usage": True},
        store=True,
        user="u1",
    )
    assert result.n == 3
    assert result.sampling == SamplingParams(
        temperature=0.2, top_p=0.9, presence_penalty=0.5, frequency_penalty=-0.5, seed=7
    )
    assert (result.logprobs, result.top_logprobs, result.stream, result.include_usage) == (True, 4, True, True)
    assert (result.store, result.user, result.model) == (True, "u1", "m")


def test_user_falls_back_to_safety_identifier() -> None:
    assert params(safety_identifier="s").user == "s"
    assert params(safety_identifier="s", user="u").user == "u"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert params(max_tokens=5).max_tokens == 5
    assert params(max_completion_tokens=9).max_tokens == 9
    assert params(max_tokens=5, max_completion_tokens=9).max_tokens == 9


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("x", ("x",)), ("", ()), (["a", "", "b"], ("a", "b")), ([], ()), (None, ())],
)
def test_stop_as_string_or_list_without_empty_strings(stop: Any, expected: tuple[str, ...]) -> None:
    assert params(stop=stop).stop == expected


def test_text_parts_are_joined_with_newlines() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert messages({"role": "system", "content": parts}, {"role": "user", "content": parts, "name": "bob"}) == (
        ChatMessage("system", "one\ntwo"),
        ChatMessage("user", "one\ntwo", name="bob"),
    )


def test_developer_tool_and_function_messages() -> None:
    assert messages(
        {"role": "developer", "content": "Be brief", "name": "dev"},
        {"role": "tool", "content": [{"type": "text", "text": "42"}], "tool_call_id": "call_1"},
        {"role": "function", "content": "43", "name": "lookup"},
        {"role": "function", "content": None, "name": "noop"},
    ) == (
        ChatMessage("developer", "Be brief", name="dev"),
        ChatMessage("tool", "42", tool_call_id="call_1"),
        ChatMessage("function", "43", name="lookup"),
        ChatMessage("function", "", name="noop"),
    )


def test_assistant_tool_calls_become_tool_calls() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    only_calls, with_text, legacy = messages(
        {"role": "assistant", "tool_calls": [call]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call], "name": "a"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": '{"x": 1}'}},
    )
    expected = (ToolCall("call_1", "f", '{"x": 1}'),)
    assert only_calls == ChatMessage("assistant", "", tool_calls=expected)
    assert with_text == ChatMessage("assistant", "Let me look.", name="a", tool_calls=expected)
    assert legacy == ChatMessage("assistant", "", tool_calls=(ToolCall("call_function", "f", '{"x": 1}'),))


def test_assistant_text_parts_and_refusals() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}]
    assert messages({"role": "assistant", "content": parts}, {"role": "assistant", "refusal": "nope"}) == (
        ChatMessage("assistant", "a\nno"),
        ChatMessage("assistant", "nope"),
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tool_choice", "auto"),
        ("function_call", "none"),
        ("parallel_tool_calls", False),
    ],
)
def test_orphan_fields_are_refused_by_name(field: str, value: Any) -> None:
    error = rejected(**{field: value})
    assert error.param == field
    assert field in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("reasoning_effort", "low"),
        ("verbosity", "low"),
        ("service_tier", "flex"),
        ("service_tier", "priority"),
    ],
)
def test_fields_pipeserve_does_not_interpret_are_kept_for_engines_that_pass_them_on(field: str, value: Any) -> None:
    """An engine without the `passthrough` capability answers 400 naming them (tests/service/test_chat.py)."""
    assert params(**{field: value}).passthrough == {field: value}


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "text"}},
        {"modalities": ["text"]},
        {"service_tier": "auto"},
        {"service_tier": "default"},
        {"prompt_cache_key": "k"},
    ],
)
def test_supported_values_of_those_fields_pass(fields: dict[str, Any]) -> None:
    assert params(**fields).passthrough == {}


def test_top_logprobs_needs_logprobs() -> None:
    for fields in ({"top_logprobs": 2}, {"top_logprobs": 0, "logprobs": False}):
        assert rejected(**fields).param == "top_logprobs"
    assert params(top_logprobs=2, logprobs=True).top_logprobs == 2


def test_stream_options_need_stream() -> None:
    for fields in ({}, {"stream": False}):
        assert rejected(stream_options={"include_usage": True}, **fields).param == "stream_options"
    assert params(stream=True, stream_options={"include_usage": False}).include_usage is False
    assert params(stream=True, stream_options={}).include_usage is False


def test_logit_bias_keys_become_token_ids() -> None:
    assert params(logit_bias={"50256": -100, "7": 2.5}).sampling.logit_bias == ((50256, -100.0), (7, 2.5))
    assert params(logit_bias={}).sampling.logit_bias == ()
    error = rejected(logit_bias={"7": 1, "hello": 5})
    assert error.param == "logit_bias"
    assert "hello" in error.message


def test_metadata_within_limits_is_kept() -> None:
    metadata = {f"k{i}": "v" for i in range(15)} | {"k" * 64: "v" * 512}
    assert params(metadata=metadata).metadata == metadata


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
    ids=["17 pairs", "65-char key", "513-char value"],
)
def test_metadata_beyond_limits_is_refused(metadata: dict[str, str]) -> None:
    assert rejected(metadata=metadata).param == "metadata"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
)
def test_non_text_content_part_is_refused_by_position(part: dict[str, Any]) -> None:
    content = [{"type": "text", "text": "what is this?"}, part]
    error = rejected(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": content}])
    assert error.param == "messages[1].content[1]"
    assert error.code == "unsupported_content"
    assert part["type"] in error.message
