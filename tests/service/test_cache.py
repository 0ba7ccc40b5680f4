"""A cached completion replayed as a stream begins as OpenAI's streams do and assembles back into itself."""

from __future__ import annotations

from typing import Any

from pipeserve.protocol import chat_completions as wire
from pipeserve.service.cache import replay


def completion(message: dict[str, Any], finish: str) -> wire.ChatCompletion:
    return wire.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "total_tokens": 5,
                "prompt_tokens_details": {},
                "completion_tokens_details": {},
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 3,
            },
        }
    )


def deltas(cached: wire.ChatCompletion) -> list[dict[str, Any]]:
    chunks = replay(cached, include_usage=False)
    return [choice.delta.model_dump(exclude_none=True) for chunk in chunks for choice in chunk.choices]


def test_the_role_rides_on_the_first_content() -> None:
    assert deltas(completion({"content": "Hello"}, "stop"))[0] == {"role": "assistant", "content": "Hello"}


def test_a_legacy_function_call_opens_with_its_name_and_the_role() -> None:
    """The openpipe SDK merges chunks onto the first: a role-only first chunk broke its legacy merge."""
    cached = completion({"content": None, "function_call": {"name": "f", "arguments": '{"a": 1}'}}, "function_call")
    first, second = deltas(cached)[:2]
    assert first == {"role": "assistant", "function_call": {"name": "f", "arguments": ""}}
    assert second == {"function_call": {"arguments": '{"a": 1}'}}


def test_tool_calls_open_with_their_head_then_their_arguments() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    first, second = deltas(completion({"content": None, "tool_calls": [call]}, "tool_calls"))[:2]
    assert first["role"] == "assistant"
    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert first["tool_calls"] == [head]
    assert second["tool_calls"] == [{"index": 0, "function": {"arguments": "{}"}}]
