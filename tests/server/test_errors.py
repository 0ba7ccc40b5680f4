"""Every bad request gets OpenAI's error shape with the right status, and never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server

HELLO = [{"role": "user", "content": "Hi"}]


def post(server: Server, body: Any, **kwargs: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(
            f"{server.v1}/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60
        )
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error  # type: ignore[no-any-return]


def test_malformed_json(server: Server) -> None:
    error = error_of(post(server, b'{"model": "x", "messages": ['), 400)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


def test_body_must_be_an_object(server: Server) -> None:
    error_of(post(server, b"[1, 2]"), 400)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"seed": 1.5}, "seed"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": 3}, "model"),
    ],
)
def test_wrong_types_and_ranges_name_the_param(server: Server, change: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, **change}
    error = error_of(post(server, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_missing_required_fields(server: Server) -> None:
    assert error_of(post(server, {"model": MODEL}), 400)["param"] == "messages"
    assert error_of(post(server, {"messages": HELLO}), 400)["param"] == "model"


def test_unknown_field_is_rejected(server: Server) -> None:
    error = error_of(post(server, {"model": MODEL, "messages": HELLO, "temprature": 1}), 400)
    assert error["param"] == "temprature"
    assert "Unrecognized request argument" in error["message"]


def test_unknown_model(server: Server) -> None:
    error = error_of(post(server, {"model": "gpt-9", "messages": HELLO}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    # OpenAI's wording, which clients (and the openpipe SDK's fallback) match on
    assert error["message"] == "The model `gpt-9` does not exist or you do not have access to it."


def test_prompt_plus_max_tokens_beyond_the_context_window(server: Server) -> None:
    error = error_of(post(server, {"model": MODEL, "messages": HELLO, "max_tokens": 9000}), 400)
    assert error["code"] == "context_length_exceeded"
    long_prompt = [{"role": "user", "content": "hello " * 9000}]
    error = error_of(post(server, {"model": MODEL, "messages": long_prompt}), 400)
    assert error["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"function_call": "auto"}, "function_call"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"audio": {"format": "wav", "voice": "nobody"}}, "audio.voice"),
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"service_tier": "flex"}, "service_tier"),
    ],
)
def test_unsupported_or_orphan_fields_are_refused_by_name(server: Server, change: dict[str, Any], param: str) -> None:
    error = error_of(post(server, {"model": MODEL, "messages": HELLO, **change}), 400)
    assert error["param"] == param
    assert param in error["message"]


def test_invalid_combinations(server: Server) -> None:
    error = error_of(post(server, {"model": MODEL, "messages": HELLO, "top_logprobs": 2}), 400)
    assert error["param"] == "top_logprobs"
    error = error_of(post(server, {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": True}}), 400)
    assert error["param"] == "stream_options"


def test_non_text_content_is_refused(server: Server) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]}
    error = error_of(post(server, body), 400)
    assert error["param"] == "messages[0].content[1]"


def test_bad_metadata_and_logit_bias(server: Server) -> None:
    too_many = {f"k{i}": "v" for i in range(17)}
    assert error_of(post(server, {"model": MODEL, "messages": HELLO, "metadata": too_many}), 400)["param"] == "metadata"
    body = {"model": MODEL, "messages": HELLO, "logit_bias": {"99999999": 5}}
    assert error_of(post(server, body), 400)["param"] == "logit_bias"
    body = {"model": MODEL, "messages": HELLO, "logit_bias": {"abc": 5}}
    assert error_of(post(server, body), 400)["param"] == "logit_bias"


def test_stream_errors_before_start_are_plain_http_errors(server: Server) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream": True, "max_tokens": 9000}
    error = error_of(post(server, body), 400)
    assert error["code"] == "context_length_exceeded"


def test_unknown_route_and_method(server: Server) -> None:
    error = error_of(httpx.get(f"{server.v1}/nope", timeout=10), 404)
    assert error["type"] == "invalid_request_error"
    error_of(httpx.get(f"{server.v1}/chat/completions", timeout=10), 405)
