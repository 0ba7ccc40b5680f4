"""Limits on what one request may ask, on the real server with its default settings: each beyond-limit request
gets a 4xx in OpenAI's shape that names the setting, and nothing is stored for it."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server

HELLO = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def chat(server: Server, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 2} | body
    return httpx.post(f"{server.v1}/chat/completions", json=payload, timeout=60)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "setting"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "max_stop_sequences"),
        ({"tools": [TOOL | {"function": {"name": f"f{i}"}} for i in range(129)]}, "tools", "max_tools"),
        ({"messages": HELLO * 2049}, "messages", "max_messages"),
    ],
)
def test_lists_beyond_their_limit_are_a_400_in_openais_words(
    server: Server, body: dict[str, Any], param: str, setting: str
) -> None:
    error = error_of(chat(server, **body), 400)
    assert error["param"] == param and error["code"] == "array_above_max_length"
    assert "array too long" in error["message"] and setting in error["message"]


def test_at_the_limit_is_fine(server: Server) -> None:
    assert chat(server, stop=["a", "b", "c", "d"]).status_code == 200


def test_a_function_description_over_1024_characters_is_a_400(server: Server) -> None:
    tool = {"type": "function", "function": {"name": "f", "description": "x" * 1025}}
    error = error_of(chat(server, tools=[tool]), 400)
    assert error["param"] == "tools[0].function.description" and error["code"] == "string_above_max_length"


def test_a_4mb_stop_string_is_a_413_without_being_read_whole(server: Server) -> None:
    error = error_of(chat(server, stop="x" * (4 * 1024 * 1024)), 413)
    assert error["code"] == "request_too_large" and "max_request_bytes" in error["message"]


def test_a_body_that_claims_to_be_huge_is_refused_before_it_is_sent(server: Server) -> None:
    """Only the headers are sent: the 413 comes back without the server waiting for 100 MB."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000000\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            piece = sock.recv(65536)  # the headers and the body may come in separate segments
            if not piece:
                break
            received += piece
    answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert '"code":"request_too_large"' in answer


def test_nesting_beyond_the_depth_limit_is_a_400_on_every_kind_of_body(server: Server) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    schema_tool = {"type": "function", "function": {"name": "f", "parameters": deep}}
    for response in (
        chat(server, tools=[schema_tool]),
        httpx.post(f"{server.v1}/report", json={"reqPayload": deep, "statusCode": 200}, timeout=30),
        httpx.post(f"{server.v1}/report-anthropic", json={"reqPayload": deep}, timeout=30),
    ):
        assert error_of(response, 400)["code"] == "json_too_deep"


def test_a_thousand_filters_is_a_400_not_a_database_error(server: Server) -> None:
    filters = [{"field": f"metadata.k{i}", "equals": "v"} for i in range(1000)]
    for path, body in (
        ("/logs/update-metadata", {"filters": filters, "metadata": {"a": "b"}}),
        ("/logs/update-tags", {"filters": filters, "tags": {"a": "b"}}),
    ):
        error = error_of(httpx.post(f"{server.v1}{path}", json=body, timeout=30), 400)
        assert error["param"] == "filters" and "max_filters" in error["message"]
    query = "&".join(f"metadata.k{i}=v" for i in range(1000))
    assert error_of(httpx.get(f"{server.v1}/logs?{query}", timeout=30), 400)["param"] == "query"


def test_too_many_tag_keys_are_a_400(server: Server) -> None:
    tags = {f"k{i}": "v" for i in range(65)}
    error = error_of(httpx.post(f"{server.v1}/report", json={"tags": tags}, timeout=30), 400)
    assert error["param"] == "tags" and error["code"] == "object_above_max_properties"
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2}
    answer = httpx.post(f"{server.v1}/chat/completions", json=body, headers={"op-tags": json.dumps(tags)}, timeout=30)
    assert error_of(answer, 400)["param"] == "op-tags"


@pytest.mark.parametrize("moment", ["2024-01-01T00:00:00+14:00", "2024-01-01T00:00:00-14:00"])
def test_times_with_any_offset_filter_logs(server: Server, moment: str) -> None:
    for value in (moment, moment.replace("+", "%2B")):
        response = httpx.get(f"{server.v1}/logs?to={value}", timeout=30)
        # a raw "+" reads as a space in a query string: a 400 that says what a time looks like, never a 500
        assert response.status_code in (200, 400), response.text
    assert httpx.get(f"{server.v1}/logs", params={"to": moment, "from": moment}, timeout=30).status_code == 200
