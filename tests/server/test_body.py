"""Request bodies: pydantic error locations written as OpenAI params, and the 400s built from them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from starlette.requests import Request

from pipeserve.errors import InvalidRequestError, RequestTooLargeError
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.server.body import _to_error, json_depth, param_path, parse_body, read_json
from pipeserve.settings import Settings

HELLO = [{"role": "user", "content": "Hi"}]
CONTENT_UNION = "list[tagged-union[TextPart,ImagePart,AudioPart,FilePart]]"


MESSAGES = {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}, {"type": "text", "text": 2}]}]}


@pytest.mark.parametrize(
    ("loc", "data", "expected"),
    [
        (("model",), {"model": 1}, "model"),
        (("messages", 0), MESSAGES, "messages[0]"),
        (("messages", 0, "user", "content"), MESSAGES, "messages[0].content"),
        (("messages", 0, "user", "content", "str"), MESSAGES, "messages[0].content"),
        (("messages", 0, "user", "content", CONTENT_UNION, 1, "text", "text"), MESSAGES, "messages[0].content[1].text"),
        (("messages", 0, "tool", "tool_call_id"), {"messages": [{"role": "tool"}]}, "messages[0].tool_call_id"),
        (("stop", "str"), {"stop": 5}, "stop"),
        (("stop", "list[str]", 2), {"stop": ["a", "b", 3]}, "stop[2]"),
        (("tool_choice", "literal['none','auto','required']"), {"tool_choice": "x"}, "tool_choice"),
        (
            ("tool_choice", "NamedToolChoice", "function", "name"),
            {"tool_choice": {"function": {}}},
            "tool_choice.function.name",
        ),
        (("function_call", "NamedFunction", "name"), {"function_call": {}}, "function_call.name"),
        (
            ("response_format", "json_schema", "json_schema", "name"),
            {"response_format": {"type": "json_schema", "json_schema": {}}},
            "response_format.json_schema.name",
        ),
        (("metadata", "Key"), {"metadata": {"Key": 1}}, "metadata.Key"),
        (("seed", "int"), {"seed": "x"}, "seed"),
    ],
)
def test_param_path(loc: tuple[int | str, ...], data: Any, expected: str) -> None:
    assert param_path(loc, data) == expected


def test_param_path_without_the_body_drops_union_members() -> None:
    assert param_path(("stop", "list[str]", 2)) == "stop[2]"
    assert param_path(("temperature", "float")) == "temperature"


def error_for(change: dict[str, Any]) -> InvalidRequestError:
    body = {"model": "m", "messages": HELLO, **change}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    error = _to_error(info.value.errors()[0], body)
    assert isinstance(error, InvalidRequestError) and error.status_code == 400
    return error


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temprature": 1}, "temprature"),
        ({"messages": [{"role": "user", "content": "x", "nme": "a"}]}, "messages[0].nme"),
        ({"stream": True, "stream_options": {"usage": True}}, "stream_options.usage"),
        ({"response_format": {"type": "text", "strict": True}}, "response_format.strict"),
    ],
)
def test_extra_field(change: dict[str, Any], param: str) -> None:
    error = error_for(change)
    assert error.param == param
    assert error.message == f"Unrecognized request argument supplied: {param}"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": "m", "messages": HELLO, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_missing_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    error = _to_error(info.value.errors()[0], body)
    assert error.param == param
    assert error.message == f"Missing required parameter: '{param}'."


@pytest.mark.parametrize(
    ("change", "param", "shown"),
    [
        ({"temperature": "hot"}, "temperature", '"hot"'),
        ({"temperature": 2.5}, "temperature", "2.5"),
        ({"n": 0}, "n", "0"),
        ({"stream": "yes"}, "stream", '"yes"'),
        ({"model": 3}, "model", "3"),
        ({"stop": 5}, "stop", "5"),
        ({"metadata": {"k": 1}}, "metadata.k", "1"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5", "101"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "5"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]", '{"role":"robot","content":"x"}'),
        ({"messages": []}, "messages", "[]"),
    ],
)
def test_wrong_value(change: dict[str, Any], param: str, shown: str) -> None:
    error = error_for(change)
    assert error.param == param
    assert error.message.startswith(f"Invalid value for '{param}': ")
    assert error.message.endswith(f"(got {shown}).")


def test_shown_value_is_cut_to_100_characters() -> None:
    error = error_for({"model": ["x" * 300]})
    shown = error.message.split("(got ", 1)[1].removesuffix(").")
    assert shown == orjson.dumps(["x" * 300]).decode()[:100]


@pytest.mark.parametrize(
    ("change", "param"),
    [({"Temperature": 1}, "Temperature"), ({"metadata": {"Key": 1}}, "metadata.Key")],
)
def test_mixed_case_names_are_kept(change: dict[str, Any], param: str) -> None:
    assert error_for(change).param == param


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"functions": [{}]}, "functions[0].name"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "messages[0].tool_calls[0].id"),
        ({"messages": [{"role": "assistant", "function_call": {"name": "f"}}]}, "messages[0].function_call.arguments"),
    ],
)
def test_fields_under_plain_lists_and_nested_function_call(change: dict[str, Any], param: str) -> None:
    assert error_for(change).param == param


def request(body: bytes, *, chunks: int = 1, declared: int | None = None, **settings: Any) -> Request:
    """A request whose body arrives in `chunks` pieces, optionally with a Content-Length, on a server with
    `settings`."""
    size = -(-len(body) // chunks) or 1
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        piece = pieces[len(received)]
        received.append(len(piece))
        return {"type": "http.request", "body": piece, "more_body": len(received) < len(pieces)}

    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    app = SimpleNamespace(state=SimpleNamespace(settings=Settings(**settings)))
    scope = {"type": "http", "method": "POST", "headers": headers, "app": app, "pieces_read": received}
    return Request(scope, receive)


async def test_a_body_declared_too_large_is_refused_before_it_is_read() -> None:
    big = request(b"x" * 5000, declared=5000, max_request_bytes=4096)
    with pytest.raises(RequestTooLargeError) as info:
        await read_json(big)
    assert info.value.status_code == 413 and "max_request_bytes" in info.value.message
    assert big.scope["pieces_read"] == []


async def test_a_body_is_refused_while_it_streams_in_once_past_the_limit() -> None:
    body = b'{"stop": "' + b"x" * 20_000 + b'"}'
    streamed = request(body, chunks=10, max_request_bytes=4096)
    with pytest.raises(RequestTooLargeError):
        await read_json(streamed)
    assert len(streamed.scope["pieces_read"]) < 10  # stopped reading, never buffered it whole


async def test_a_body_within_the_limit_is_read_whole_from_its_pieces() -> None:
    body = orjson.dumps({"model": "m", "messages": HELLO, "user": "u" * 3000})
    assert (await read_json(request(body, chunks=7, max_request_bytes=4096)))["user"] == "u" * 3000


@pytest.mark.parametrize("depth", [9, 64, 65, 300, 2000])
async def test_nesting_deeper_than_the_limit_is_a_400_before_any_work(depth: int) -> None:
    nested: Any = 1
    for _ in range(depth - 1):
        nested = [nested]
    body = orjson.dumps({"deep": nested}) if depth <= 250 else b'{"deep": ' + b"[" * depth + b"]" * depth + b"}"
    if depth <= 64:
        assert "deep" in await read_json(request(body))
        return
    with pytest.raises(InvalidRequestError) as info:
        await read_json(request(body))
    assert info.value.status_code == 400


def test_json_depth_counts_containers_only_and_stops_past_the_limit() -> None:
    assert json_depth(1, 10) == 0
    assert json_depth({"a": [1, {"b": []}]}, 10) == 4
    assert json_depth([[[[[]]]]], 2) == 3  # no deeper than limit + 1: the walk stopped there


async def test_parse_body_validates_into_the_model() -> None:
    parsed = await parse_body(request(orjson.dumps({"model": "m", "messages": HELLO})), ChatCompletionRequest)
    assert parsed.model == "m"


@pytest.mark.parametrize(("raw", "needle"), [(b'{"model": "m", "messages": [', "JSON"), (b"[1, 2]", "list")])
async def test_parse_body_refuses_what_is_not_a_json_object(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await parse_body(request(raw), ChatCompletionRequest)
    assert needle in info.value.message
    assert info.value.param is None


async def test_parse_body_raises_the_first_validation_error() -> None:
    raw = orjson.dumps({"model": "m", "messages": HELLO, "temprature": 1, "n": 0})
    with pytest.raises(InvalidRequestError) as info:
        await parse_body(request(raw), ChatCompletionRequest)
    assert info.value.param == "n"
    assert info.value.message.startswith("Invalid value for 'n': ")


@pytest.mark.parametrize("number", [2**64 - 1, -(2**63), 10**18])
async def test_integers_stored_exactly_are_accepted(number: int) -> None:
    body = b'{"n": ' + str(number).encode() + b', "s": "12345678901234567890123"}'
    assert (await read_json(request(body)))["n"] == number


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
async def test_integers_beyond_64_bits_are_a_400_not_rounded(number: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await read_json(request(b'{"n": ' + str(number).encode() + b"}"))
    assert "64-bit" in info.value.message
